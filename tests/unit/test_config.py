import pytest
from pydantic import ValidationError

from sidstream.config import Settings

pytestmark = pytest.mark.unit


def test_env_overrides_nested(monkeypatch):
    monkeypatch.setenv("SIDSTREAM_KAFKA__PORT", "29999")
    monkeypatch.setenv("SIDSTREAM_STREAM__BATCH_SIZE", "7")
    s = Settings()
    assert s.kafka.port == 29999 and s.kafka.bootstrap.endswith(":29999")
    assert s.stream.batch_size == 7


def test_unknown_keys_rejected():
    with pytest.raises(ValidationError):
        Settings(kafka={"prot": 1})


def test_frozen():
    s = Settings()
    with pytest.raises(ValidationError):
        s.kafka.port = 1  # type: ignore[misc]
