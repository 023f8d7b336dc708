"""A throwaway redis-server for the Redis online-store tests (skipped without the binary)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.plugins.kafka import free_port


def redis_command(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(command)
        return s.recv(64)


@contextmanager
def running_redis(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A throwaway redis-server on a free port, no persistence: (its process, its port); stopped
    by its pid on exit. Skips the test without the binary or the client."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not on PATH (apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client is missing: pip install 'feast[redis]'")
    port = free_port()
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
        yield proc, port
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # a test may have stopped it
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A throwaway redis-server shared by the session's tests; yields its host:port."""
    with running_redis(tmp_path_factory.mktemp("redis")) as (_, port):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def own_redis_server(tmp_path):
    """A redis-server for one test, which may stop or kill it: yields (host:port, its process)."""
    (tmp_path / "own-redis").mkdir()
    with running_redis(tmp_path / "own-redis") as (proc, port):
        yield f"127.0.0.1:{port}", proc


SECURE_REDIS_USER = "sidstream-test"
SECURE_REDIS_PASSWORD = "PLANTED-redis-5ecret-7f3a"  # tests grep everything for it


@pytest.fixture(scope="session")
def secure_redis_server(tmp_path_factory):
    """A throwaway redis-server that takes TLS only (a tls-port, a throwaway CA) and an ACL user
    with a password (the default user off); yields the RedisTarget-style (url, ca_file, password)."""
    from streams.admin.certs import make_server_cert

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not on PATH (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis-tls")
    cert = make_server_cert(workdir / "tls")
    conf = workdir / "redis.conf"
    conf.write_text("\n".join([
        "port 0", f"tls-port {port}", "bind 127.0.0.1", f"tls-cert-file {cert.cert_file}",
        f"tls-key-file {cert.key_file}", f"tls-ca-cert-file {cert.ca_file}", "tls-auth-clients no",
        'save ""', "appendonly no", f"dir {workdir}", "user default off",
        f"user {SECURE_REDIS_USER} on >{SECURE_REDIS_PASSWORD} ~* &* +@all", ""]))  # fmt: skip
    conf.chmod(0o600)
    proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _tls_port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server with TLS did not start on port {port} (exit code {proc.poll()})")
            time.sleep(0.05)
        yield f"rediss://{SECURE_REDIS_USER}@127.0.0.1:{port}", cert.ca_file, SECURE_REDIS_PASSWORD
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _tls_port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
