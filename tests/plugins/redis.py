"""A throwaway redis-server for the Redis online-store tests (skipped without the binary)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from tests.plugins.kafka import free_port


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
    port = free_port()
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
