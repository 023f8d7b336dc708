"""Shared fixtures. The broker is a real Apache Kafka 3.9.x (KRaft) started by the project's
own manager (streams.admin.broker) once per test session on free loopback ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sidcore.config import KafkaSettings, Settings

SHARED_LASTFM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lastfm-2k"
AUDIO_DIR = Path("/usr/share/games/singularity/music")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    from streams.admin.broker import LocalBroker

    settings = KafkaSettings(port=_free_port(), controller_port=_free_port(), partitions=2, heap="384m")
    broker = LocalBroker(settings, tmp_path_factory.mktemp("kafka"), Settings().cache_dir)
    broker.start(timeout_s=120)
    yield broker
    broker.stop()


@pytest.fixture
def test_settings(tmp_path, kafka_broker) -> Settings:
    """Settings for one test: the session broker, a fresh home/registry/Feast under tmp_path."""
    return Settings(
        home=tmp_path / "home",
        kafka=kafka_broker.settings,
        stream={"batch_size": 16, "batch_timeout_s": 0.1},
        encoders={"audio_model": "logmel"},  # fast; musicnn has its own tests
    )


def redis_command(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(command)
        return s.recv(64)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A throwaway redis-server on a free port, no persistence; yields its host:port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not on PATH (apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client is missing: pip install 'feast[redis]'")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis_command(port, b"PING\r\n").startswith(b"+PONG"):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port} (exit code {proc.poll()})")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
