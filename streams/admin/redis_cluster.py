"""A local Redis Cluster for the `redis_cluster` Feast profile: Debian's `redis-server`, N primaries
with R replicas each on consecutive loopback ports, joined by `redis-cli --cluster create`.

Each node has its own folder (config, nodes.conf, pid, log) under `home/node-<port>`; nothing is
persisted beyond the cluster's own state (no RDB, no AOF: the online store is rebuilt from the
offline log and `embeddings.kept`). The nodes fail a silent primary over to its replica after
`node_timeout_ms`.

Secured (`password`, `tls`): every node requires the password (`requirepass`, and `masterauth`
for its replication) and speaks TLS only, the cluster bus and replication included; the secrets
go in each node's owner-only config file, never on a command line, and `redis-cli` gets the
password through REDISCLI_AUTH.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streams.admin.certs import ServerCert


class RedisClusterError(RuntimeError):
    """The local Redis Cluster cannot be set up, started or reached."""


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RedisClusterError(f"`{binary}` not found on PATH: install Debian's redis-server (apt-get install redis-server)")
    return path


def _ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64)


@dataclass(frozen=True)
class LocalRedisCluster:
    home: Path
    base_port: int
    primaries: int = 3
    replicas: int = 1  # per primary
    node_timeout_ms: int = 2000
    password: str | None = None  # requirepass + masterauth (config file only)
    tls: ServerCert | None = None  # TLS only: clients, cluster bus, replication

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.primaries * (1 + self.replicas))]

    @property
    def url(self) -> str:
        """settings.redis_url of the cluster: every node (the client finds the slots itself),
        `rediss://` when it speaks TLS (the password goes in settings.redis_password)."""
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"rediss://{nodes}" if self.tls else nodes

    def _cli(self, *args: str) -> list[str]:
        tls = ["--tls", "--cacert", str(self.tls.ca_file)] if self.tls else []
        return [_require("redis-cli"), *tls, *args]

    def _cli_env(self) -> dict[str, str]:
        return {**os.environ, "REDISCLI_AUTH": self.password} if self.password else dict(os.environ)

    def _config(self, port: int) -> str:
        d = self.node_dir(port)
        lines = ["bind 127.0.0.1", "cluster-enabled yes", f"cluster-config-file {d / 'nodes.conf'}",
                 f"cluster-node-timeout {self.node_timeout_ms}", f"cluster-port {port + 10000}", 'save ""',
                 "appendonly no", f"dir {d}", "daemonize yes", f"pidfile {d / 'redis.pid'}", f"logfile {d / 'redis.log'}"]
        if self.tls:
            lines += ["port 0", f"tls-port {port}", f"tls-cert-file {self.tls.cert_file}", f"tls-key-file {self.tls.key_file}",
                      f"tls-ca-cert-file {self.tls.ca_file}", "tls-auth-clients no", "tls-cluster yes", "tls-replication yes"]
        else:
            lines.append(f"port {port}")
        if self.password:
            lines += [f"requirepass {self.password}", f"masterauth {self.password}"]
        return "\n".join(lines) + "\n"

    def ping(self, port: int) -> bool:
        if not self.tls and not self.password:
            return _ping(port).startswith(b"+PONG")
        proc = subprocess.run(self._cli("-p", str(port), "ping"), capture_output=True, text=True, timeout=5, env=self._cli_env())
        return proc.stdout.strip() == "PONG"

    def node_dir(self, port: int) -> Path:
        return self.home / f"node-{port}"

    def pid(self, port: int) -> int | None:
        f = self.node_dir(port) / "redis.pid"
        try:
            pid = int(f.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def start(self, timeout_s: float = 30.0) -> str:
        """Start every node, create the cluster (once) and wait until it is `cluster_state:ok`; its url."""
        server = _require("redis-server")
        for port in self.ports:
            if self.pid(port) is not None:
                continue
            d = self.node_dir(port)
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "redis.conf"
            conf.touch(mode=0o600)
            conf.chmod(0o600)
            conf.write_text(self._config(port))
            subprocess.run([server, str(conf)], check=True, capture_output=True)
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            while True:
                try:
                    if self.ping(port):
                        break
                except (OSError, subprocess.TimeoutExpired):
                    pass
                if time.monotonic() > deadline:
                    raise RedisClusterError(f"redis-server on port {port} did not answer; see {self.node_dir(port) / 'redis.log'}")
                time.sleep(0.05)
        if self.cluster_info(self.ports[0]).get("cluster_known_nodes") != str(len(self.ports)):
            proc = subprocess.run(self._cli("--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                                            "--cluster-replicas", str(self.replicas), "--cluster-yes"),
                                  capture_output=True, text=True, env=self._cli_env())
            if proc.returncode != 0:
                raise RedisClusterError(f"redis-cli --cluster create failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        self.wait_ok(deadline - time.monotonic())
        return self.url

    def cluster_info(self, port: int) -> dict[str, str]:
        proc = subprocess.run(self._cli("-p", str(port), "cluster", "info"), capture_output=True, text=True, timeout=5,
                              env=self._cli_env())
        return dict(line.strip().split(":", 1) for line in proc.stdout.splitlines() if ":" in line)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node says `cluster_state:ok` (all slots served)."""
        deadline = time.monotonic() + max(1.0, timeout_s)
        while True:
            states = [self.cluster_info(p).get("cluster_state") for p in self.ports if self.pid(p) is not None]
            if states and all(s == "ok" for s in states):
                return
            if time.monotonic() > deadline:
                raise RedisClusterError(f"Redis Cluster on {self.url} not ok after {timeout_s:.0f}s: {states}")
            time.sleep(0.2)

    def primaries_now(self) -> list[int]:
        """The ports of the nodes that are primaries now (failovers change them)."""
        live = next(p for p in self.ports if self.pid(p) is not None)
        out = subprocess.run(self._cli("-p", str(live), "cluster", "nodes"), capture_output=True, text=True, timeout=5,
                             env=self._cli_env()).stdout
        return sorted(int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in (ln.split() for ln in out.splitlines())
                      if "master" in f[2] and "fail" not in f[2])

    def wait_failover(self, victim: int, timeout_s: float = 60.0) -> float:
        """After `victim` (a primary) died: until the cluster has flagged it failed, promoted its
        replica and is ok again; returns the seconds that took."""
        started = time.monotonic()
        while victim in self.primaries_now():
            if time.monotonic() - started > timeout_s:
                raise RedisClusterError(f"primary {victim} was not failed over within {timeout_s:.0f}s")
            time.sleep(0.1)
        self.wait_ok(timeout_s - (time.monotonic() - started))
        return time.monotonic() - started

    def kill(self, port: int) -> int:
        """kill -9 one node (a drill); returns its pid."""
        pid = self.pid(port)
        if pid is None:
            raise RedisClusterError(f"no redis-server running on port {port}")
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every node by its pid."""
        pids = [p for p in (self.pid(port) for port in self.ports) if p is not None]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
