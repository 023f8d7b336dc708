"""The README's main command, run as a user would (small sizes), on the session's broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import AUDIO_DIR

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_json_line(kafka_broker, tmp_path):
    if not AUDIO_DIR.is_dir():
        pytest.skip(f"{AUDIO_DIR} missing: apt-get install singularity-music")
    env = dict(os.environ)
    env.update(
        SIDSTREAM_HOME=str(tmp_path / "home"),
        SIDSTREAM_KAFKA__PORT=str(kafka_broker.settings.port),
        SIDSTREAM_KAFKA__CONTROLLER_PORT=str(kafka_broker.settings.controller_port),
        SIDSTREAM_KAFKA__PARTITIONS="2",
        SIDSTREAM_CODEBOOK__CODEBOOK_SIZE="16",
        SIDSTREAM_LASTFM_DIR=str(tmp_path / "no-such-dir"),  # use the shipped sample, as a fresh clone does
    )
    # the broker is the session's (reused, not started): the demo must find it reachable
    env["SIDSTREAM_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "sidstream.cli", "demo", "--tracks", "60", "--audio", "3", "--json", "--timeout", "180"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    summary = json.loads(lines[0])
    assert summary["tracks"] == 63 and summary["assigned"] == 63 and summary["feast_read"] == 63
    assert summary["dlq"] == 2
    assert summary["broker"].startswith("kafka 3.9.")
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
