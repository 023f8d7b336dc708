"""Settings for one test against the session broker (tests.plugins.kafka)."""

from __future__ import annotations

import pytest

from sidcore.config import Settings


@pytest.fixture
def test_settings(tmp_path, kafka_broker) -> Settings:
    """Settings for one test: the session broker, a fresh home/registry/Feast under tmp_path."""
    return Settings(
        home=tmp_path / "home",
        kafka=kafka_broker.settings,
        stream={"batch_size": 16, "batch_timeout_s": 0.1},
        encoders={"audio_model": "logmel"},  # fast; musicnn has its own tests
    )
