"""Local single-node Apache Kafka broker (KRaft, broker+controller) for the demo and tests.

The broker jars are resolved by Maven from ``deploy/kafka/pom.xml`` into a cache outside
the repo (``<cache_dir>/kafka-<version>/libs``); the broker runs as a child JVM whose pid,
config and data live under ``<home>/kafka``. Nothing here fakes a broker.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sidcore.config import REPO_ROOT, KafkaSettings, Settings

log = logging.getLogger(__name__)

POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
LOG4J = REPO_ROOT / "deploy" / "kafka" / "log4j.properties"


class BrokerError(RuntimeError):
    """The local broker cannot be set up, started or reached."""


def _require(binary: str, hint: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise BrokerError(f"`{binary}` not found on PATH: {hint}")
    return path


@dataclass(frozen=True)
class LocalBroker:
    settings: KafkaSettings
    home: Path  # runtime dir: config, data, pid, logs
    cache_dir: Path  # jar cache (outside the repo)

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.settings.version}" / "libs"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    # -- jars -----------------------------------------------------------------------------------
    def resolve_jars(self) -> Path:
        """Resolve the broker jars with Maven once; later calls reuse the cache."""
        marker = self.libs_dir / ".complete"
        if marker.is_file():
            return self.libs_dir
        mvn = _require("mvn", "install Apache Maven (Debian: apt-get install maven) to resolve the Kafka jars")
        _require("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
        self.libs_dir.mkdir(parents=True, exist_ok=True)
        log.info("resolving Apache Kafka %s jars with Maven into %s", self.settings.version, self.libs_dir)
        cmd = [
            mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-Dkafka.version={self.settings.version}", f"-DoutputDirectory={self.libs_dir}",
            "-DincludeScope=runtime",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BrokerError(f"Maven could not resolve Kafka {self.settings.version}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        if not any(self.libs_dir.glob(f"kafka_2.13-{self.settings.version}.jar")):
            raise BrokerError(f"Maven finished but kafka_2.13-{self.settings.version}.jar is not in {self.libs_dir}")
        marker.write_text("ok\n")
        return self.libs_dir

    # -- lifecycle ------------------------------------------------------------------------------
    def _write_config(self) -> None:
        s = self.settings
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{s.host}:{s.controller_port}",
                    f"listeners=PLAINTEXT://{s.host}:{s.port},CONTROLLER://{s.host}:{s.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{s.host}:{s.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data_dir}",
                    f"num.partitions={s.partitions}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )

    def _java_cmd(self, main_class: str, *args: str) -> list[str]:
        java = _require("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
        return [
            java, f"-Xmx{self.settings.heap}", f"-Xms{self.settings.heap}", "-XX:+UseG1GC",
            f"-Dlog4j.configuration=file:{LOG4J}", f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp", f"{self.libs_dir}/*", main_class, *args,
        ]  # fmt: skip

    def pid(self) -> int | None:
        if not self.pid_file.is_file():
            return None
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            return None
        return pid

    def is_reachable(self, timeout_s: float = 3.0) -> bool:
        """True when the broker answers a metadata request."""
        from confluent_kafka.admin import AdminClient

        if not _port_open(self.settings.host, self.settings.port):
            return False
        admin = AdminClient({"bootstrap.servers": self.settings.bootstrap, "socket.timeout.ms": 2000})
        try:
            admin.list_topics(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        return True

    def start(self, timeout_s: float = 90.0) -> int | None:
        """Start the broker (or reuse a reachable one) and wait until it serves metadata.

        Returns the broker's pid, or None when an already running broker that this home did
        not start answers on the configured port (it is reused, and not stopped by `stop`).
        """
        running = self.pid()
        if running is not None and self.is_reachable():
            log.info("reusing local broker pid %d on %s", running, self.settings.bootstrap)
            return running
        if _port_open(self.settings.host, self.settings.port):
            if self.is_reachable():
                log.info("reusing the Kafka broker already answering on %s", self.settings.bootstrap)
                return None
            raise BrokerError(f"port {self.settings.port} is taken by something that is not a Kafka broker")
        self.resolve_jars()
        self._write_config()
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "meta.properties").is_file():
            cluster_id = _kraft_cluster_id()
            fmt = subprocess.run(
                self._java_cmd("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(self.config_file)),
                capture_output=True, text=True,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise BrokerError(f"formatting KRaft storage failed: {fmt.stdout[-1500:]}{fmt.stderr[-1500:]}")
        out = open(self.home / "logs" / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            self._java_cmd("kafka.Kafka", str(self.config_file)),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.home / "logs" / "stdout.log").read_text(errors="replace")[-2000:]
                raise BrokerError(f"broker exited with code {proc.returncode}: {tail}")
            if self.is_reachable(timeout_s=2.0):
                log.info("local Kafka %s up on %s (pid %d)", self.settings.version, self.settings.bootstrap, proc.pid)
                return proc.pid
            time.sleep(0.5)
        self.stop()
        raise BrokerError(f"broker did not answer metadata requests within {timeout_s:.0f}s; see {self.home / 'logs'}")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL); returns True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.2)
        else:
            log.warning("broker pid %d ignored SIGTERM; killing", pid)
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {
            "running": pid is not None,
            "pid": pid,
            "reachable": self.is_reachable() if pid is not None else False,
            "bootstrap": self.settings.bootstrap,
            "version": self.settings.version,
            "home": str(self.home),
            "jars": str(self.libs_dir),
        }


def _alive(pid: int) -> bool:
    try:
        # reap if it is our child; ignore if not
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at /proc
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _kraft_cluster_id(new_uuid=uuid.uuid4) -> str:
    """A KRaft cluster id: base64url of a random UUID, 22 chars, as kafka-storage random-uuid.

    Like Kafka's own `Uuid.randomUuid`, it never starts with '-': one id in 64 would, and
    kafka-storage's argument parser then reads `-t -abc...` as a missing value plus an
    unknown option, so formatting the storage would fail at random.
    """
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(new_uuid().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def local_broker(settings: Settings) -> LocalBroker:
    """The local broker of these settings: kafka settings, its home under settings.home, the jar cache."""
    return LocalBroker(settings.kafka, settings.home / "kafka", settings.cache_dir)
