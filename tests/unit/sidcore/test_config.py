import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from sidcore.config import Settings, SettingsError, dump_settings, load_settings

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


def _cli(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDSTREAM_")} | env_extra
    return subprocess.run([sys.executable, "-m", "sidstream.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_unknown_env_keys_fail_at_every_level(monkeypatch):
    monkeypatch.setenv("SIDSTREAM_KAFKA__PROT", "1")
    with pytest.raises(SettingsError, match="SIDSTREAM_KAFKA__PROT.*settings.kafka has no field 'prot'"):
        Settings()
    monkeypatch.delenv("SIDSTREAM_KAFKA__PROT")
    monkeypatch.setenv("SIDSTREAM_LASTFM_DRI", "/tmp")
    with pytest.raises(SettingsError, match="SIDSTREAM_LASTFM_DRI"):
        Settings()


def test_unknown_env_key_is_one_clear_line_on_the_cli():
    proc = _cli({"SIDSTREAM_STREAM__BATCH_SIZ": "8"}, "topics", "list")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "SIDSTREAM_STREAM__BATCH_SIZ" in lines[0] and "batch_size" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_configured_data_path_fails(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-lastfm"
    monkeypatch.setenv("SIDSTREAM_LASTFM_DIR", str(missing))
    with pytest.raises(ValidationError, match="not an existing folder"):
        Settings()
    monkeypatch.delenv("SIDSTREAM_LASTFM_DIR")
    proc = _cli({"SIDSTREAM_LASTFM_DIR": str(missing)}, "demo", "--json")
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lastfm_dir" in lines[0] and str(missing) in lines[0], proc.stderr


def test_unconfigured_lastfm_means_default_or_sample(monkeypatch):
    monkeypatch.delenv("SIDSTREAM_LASTFM_DIR", raising=False)
    assert Settings(lastfm_dir="sample").lastfm_source is None  # the shipped sample, explicitly
    source = Settings().lastfm_source
    assert source is None or (source / "artists.dat").is_file()


def test_settings_round_trip_whole_through_a_file(tmp_path):
    s = Settings(home=tmp_path / "h", stream={"audio_wait_s": 12.5}, codebook={"anchor": "input", "seed": 3})
    loaded = load_settings(dump_settings(s, tmp_path / "settings.json"))
    assert loaded == s
