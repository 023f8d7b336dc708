"""Local Apache Kafka (KRaft; one node or a cluster of N controller+broker nodes) for the demo and tests.

The broker jars are resolved by Maven from ``deploy/kafka/pom.xml`` into a cache outside
the repo (``<cache_dir>/kafka-<version>/libs``); each node runs as a child JVM whose pid,
config and data live under ``<home>/kafka`` (``<home>/kafka/node-<n>`` in a cluster). Nothing here fakes a broker.
"""

from __future__ import annotations

import contextlib
import functools
import json
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
from streams.admin.broker_security import SecureListener, client_settings, ensure_listener, scram_format_args
from streams.kafka_clients import librdkafka

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
class KafkaNode:
    """One combined KRaft controller+broker node of the local cluster; its files live in `home`."""

    settings: KafkaSettings
    node_id: int  # 1-based
    home: Path
    libs_dir: Path
    secure: SecureListener | None = None  # SASL_SSL client listener (streams.admin.broker_security)

    @property
    def ports(self) -> tuple[int, int]:
        return self.settings.node_ports(self.node_id)

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.ports[0]}"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "stdout.log"

    def write_config(self) -> None:
        s, n = self.settings, self.settings.brokers
        client, controller = self.ports
        voters = ",".join(f"{i}@{s.host}:{s.node_ports(i)[1]}" for i in range(1, n + 1))
        internal_rf = min(3, n)
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.touch(mode=0o600)  # a secured node's file holds its keystore and inter-broker passwords
        self.config_file.write_text("\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={voters}",
            *(self.secure.properties(s.host, client, controller) if self.secure else [
                f"listeners=PLAINTEXT://{s.host}:{client},CONTROLLER://{s.host}:{controller}",
                f"advertised.listeners=PLAINTEXT://{s.host}:{client}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT"]),
            f"log.dirs={self.data_dir}",
            f"num.partitions={s.partitions}",
            # the group coordinator's and transactions' own topics survive a broker like the data does
            f"offsets.topic.replication.factor={internal_rf}",
            "offsets.topic.num.partitions=4",
            f"transaction.state.log.replication.factor={internal_rf}",
            f"transaction.state.log.min.isr={min(2, internal_rf)}",
            f"default.replication.factor={internal_rf}",
            f"min.insync.replicas={s.min_insync_replicas}",
            "unclean.leader.election.enable=false",
            # a node that stops heartbeating is fenced and its partitions get new leaders after this
            # (Kafka's 9 s default would be most of a 10 s gap budget on its own)
            "broker.session.timeout.ms=2500",
            "broker.heartbeat.interval.ms=400",
            # and a dead active controller is replaced after this (default 2 s) plus an election
            # (default 1 s): a killed leader that was also the controller costs both, then the fencing
            "controller.quorum.fetch.timeout.ms=1000",
            "controller.quorum.election.timeout.ms=500",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=168",
            "",
        ]))  # fmt: skip

    def java_cmd(self, main_class: str, *args: str) -> list[str]:
        java = _require("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
        return [
            java, f"-Xmx{self.settings.heap}", f"-Xms{self.settings.heap}", "-XX:+UseG1GC",
            f"-Dlog4j.configuration=file:{LOG4J}", f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp", f"{self.libs_dir}/*", main_class, *args,
        ]  # fmt: skip

    def format(self, cluster_id: str) -> None:
        """Format this node's KRaft storage once (a formatted node keeps its data)."""
        if (self.data_dir / "meta.properties").is_file():
            return
        users = scram_format_args(self.settings, self.secure) if self.secure else []
        fmt = subprocess.run(self.java_cmd("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                                           "-c", str(self.config_file), *users), capture_output=True, text=True)
        if fmt.returncode != 0:
            raise BrokerError(f"formatting node {self.node_id}'s KRaft storage failed: {fmt.stdout[-1500:]}{fmt.stderr[-1500:]}")

    def pid(self) -> int | None:
        if not self.pid_file.is_file():
            return None
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            return None
        return pid if _alive(pid) else None

    def spawn(self) -> subprocess.Popen[bytes]:
        self.write_config()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(self.java_cmd("kafka.Kafka", str(self.config_file)), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def is_serving(self, timeout_s: float = 3.0) -> bool:
        """True when this node answers a metadata request and is a registered broker in it."""
        from confluent_kafka.admin import AdminClient

        if not _port_open(self.settings.host, self.ports[0]):
            return False
        admin = AdminClient(librdkafka(self.settings.model_copy(update={"bootstrap_servers": self.address}), {"socket.timeout.ms": 2000}))
        try:
            md = admin.list_topics(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        return self.node_id in md.brokers

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to this node's JVM (kill -9 by default: no clean shutdown); returns its pid."""
        pid = self.pid()
        if pid is None:
            raise BrokerError(f"node {self.node_id} is not running")
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            while _alive(pid):
                time.sleep(0.05)
            self.pid_file.unlink(missing_ok=True)
        return pid

    def terminate(self) -> int | None:
        """SIGTERM the node (a clean shutdown starts); returns its pid, None if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a paused (drilled) JVM cannot act on SIGTERM
            os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
        return pid

    def stop(self, timeout_s: float = 30.0, pid: int | None = None) -> bool:
        """Stop the node (SIGTERM, then SIGKILL); returns True if it was running. `pid`: already
        sent SIGTERM by `terminate`, wait for it."""
        pid = self.terminate() if pid is None else pid
        if pid is None:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.2)
        else:
            log.warning("broker node %d (pid %d) ignored SIGTERM; killing", self.node_id, pid)
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True


@dataclass(frozen=True)
class LocalBroker:
    """The local Kafka: `settings.brokers` KRaft nodes (each controller and broker) on loopback.

    One node (the default) keeps the layout it always had: its files directly under `home`.
    Several nodes live in `home/node-<n>`, share one cluster id and vote in one quorum; the
    number of nodes a home was formatted with is kept in `home/cluster.json`, and starting it
    with another number is refused (the quorum's voters are fixed at format time).
    """

    settings: KafkaSettings
    home: Path  # runtime dir: config, data, pid, logs
    cache_dir: Path  # jar cache (outside the repo)
    # where `start` notes the cluster it runs ({"brokers": N}) and `stop` clears it: later commands
    # of this home read it (sidcore.config.with_local_cluster) and talk to all N nodes
    pointer: Path | None = None
    # SASL_SSL instead of PLAINTEXT for clients (`broker start --secure`); `settings` are then a
    # client's of it (broker_security.client_settings: SCRAM user, password, CA)
    secure: bool = False

    @functools.cached_property
    def listener(self) -> SecureListener | None:
        return ensure_listener(self.settings, self.home / "tls") if self.secure else None

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.settings.version}" / "libs"

    @property
    def nodes(self) -> list[KafkaNode]:
        n = self.settings.brokers
        return [KafkaNode(self.settings, i, self.home if n == 1 else self.home / f"node-{i}", self.libs_dir, self.listener)
                for i in range(1, n + 1)]

    def node(self, node_id: int) -> KafkaNode:
        if not 1 <= node_id <= self.settings.brokers:
            raise BrokerError(f"no node {node_id}: the local cluster has nodes 1..{self.settings.brokers} (kafka.brokers)")
        return self.nodes[node_id - 1]

    @property
    def pid_file(self) -> Path:
        return self.nodes[0].pid_file

    @property
    def data_dir(self) -> Path:
        return self.nodes[0].data_dir

    @property
    def config_file(self) -> Path:
        return self.nodes[0].config_file

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
    def pid(self) -> int | None:
        """Node 1's pid (the only node of a one-node cluster)."""
        return self.nodes[0].pid()

    def pids(self) -> dict[int, int | None]:
        return {n.node_id: n.pid() for n in self.nodes}

    def is_reachable(self, timeout_s: float = 3.0) -> bool:
        """True when the cluster answers a metadata request (through any node)."""
        from confluent_kafka.admin import AdminClient

        if not any(_port_open(self.settings.host, n.ports[0]) for n in self.nodes):
            return False
        admin = AdminClient(librdkafka(self.settings, {"socket.timeout.ms": 2000}))
        try:
            admin.list_topics(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        return True

    def _cluster_id(self) -> str:
        """The cluster id every node is formatted with, kept in home/cluster.json with the node count."""
        path = self.home / "cluster.json"
        n = self.settings.brokers
        if path.is_file():
            meta = json.loads(path.read_text())
            if meta["brokers"] != n:
                raise BrokerError(f"{self.home} holds a {meta['brokers']}-node cluster, not {n}: stop it and remove "
                                  f"{self.home}, or give this cluster another home")
            return str(meta["cluster_id"])
        formatted = [nd for nd in self.nodes if (nd.data_dir / "meta.properties").is_file()]
        if formatted:  # a one-node home from before cluster.json: keep its id
            props = dict(line.split("=", 1) for line in (formatted[0].data_dir / "meta.properties").read_text().splitlines()
                         if "=" in line and not line.startswith("#"))
            cluster_id = props["cluster.id"]
        else:
            cluster_id = _kraft_cluster_id()
        self.home.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"brokers": n, "cluster_id": cluster_id}) + "\n")
        return cluster_id

    def start(self, timeout_s: float = 90.0) -> int | None:
        """Start every node (or reuse a reachable cluster) and wait until each serves metadata.

        Returns node 1's pid, or None when a Kafka this home did not start already answers on
        the configured port(s) (it is reused, and not stopped by `stop`).
        """
        running = self.pids()
        if all(p is not None for p in running.values()) and self.is_reachable():
            log.info("reusing the local Kafka cluster (pids %s) on %s", running, self.settings.bootstrap)
            self._note_running()
            return running[1]
        foreign = [n for n in self.nodes if n.pid() is None and _port_open(self.settings.host, n.ports[0])]
        if foreign and all(p is None for p in running.values()):
            if not self.is_reachable():
                raise BrokerError(f"port {foreign[0].ports[0]} is taken by something that is not a Kafka broker")
            found = self._broker_count()
            if found < self.settings.brokers:
                raise BrokerError(f"{foreign[0].address} answers a Kafka of {found} broker(s), not the {self.settings.brokers} "
                                  "asked for: stop it first (sidstream broker stop) or use other ports (kafka.port)")
            log.info("reusing the Kafka already answering on %s", self.settings.bootstrap)
            return None
        self.resolve_jars()
        cluster_id = self._cluster_id()
        procs = {}
        for node in self.nodes:
            if node.pid() is not None:
                continue
            node.write_config()
            node.format(cluster_id)
            procs[node.node_id] = node.spawn()
        self._wait_serving([n for n in self.nodes if n.node_id in procs], procs, timeout_s)
        self._note_running()
        return self.pid()

    def _note_running(self) -> None:
        if self.pointer is not None:
            self.pointer.parent.mkdir(parents=True, exist_ok=True)
            note: dict[str, object] = {"brokers": self.settings.brokers, "port": self.settings.port, "home": str(self.home)}
            if self.secure:  # later commands of this home log in the same way (files only, never a password)
                k = self.settings
                note["security"] = {"security_protocol": k.security_protocol, "sasl_mechanism": k.sasl_mechanism,
                                    "sasl_username": k.sasl_username, "ssl_ca_file": str(k.ssl_ca_file),
                                    **({"sasl_password_file": str(k.sasl_password_file)} if k.sasl_password_file else {})}
            self.pointer.write_text(json.dumps(note) + "\n")

    def _broker_count(self) -> int:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(librdkafka(self.settings, {"socket.timeout.ms": 2000}))
        return len(admin.list_topics(timeout=5.0).brokers)

    def start_node(self, node_id: int, timeout_s: float = 90.0) -> int:
        """Start one node of a running cluster again (after `kill`), wait until it is a broker again."""
        node = self.node(node_id)
        if node.pid() is not None:
            raise BrokerError(f"node {node_id} is already running (pid {node.pid()})")
        self.resolve_jars()
        node.write_config()
        node.format(self._cluster_id())
        proc = node.spawn()
        self._wait_serving([node], {node_id: proc}, timeout_s)
        return proc.pid

    def _wait_serving(self, nodes: list[KafkaNode], procs: dict[int, subprocess.Popen[bytes]], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = list(nodes)
        while waiting and time.monotonic() < deadline:
            for node in list(waiting):
                proc = procs[node.node_id]
                if proc.poll() is not None:
                    tail = node.log_file.read_text(errors="replace")[-2000:]
                    raise BrokerError(f"broker node {node.node_id} exited with code {proc.returncode}: {tail}")
                if node.is_serving(timeout_s=2.0):
                    log.info("local Kafka %s node %d up on %s (pid %d)", self.settings.version, node.node_id,
                             node.address, proc.pid)
                    waiting.remove(node)
            if waiting:
                time.sleep(0.5)
        if waiting:
            self.stop()
            raise BrokerError(f"broker node(s) {[n.node_id for n in waiting]} did not answer metadata requests within "
                              f"{timeout_s:.0f}s; see {self.home}")

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> int:
        """kill -9 (or `sig`) one node: a drill; returns its pid."""
        return self.node(node_id).kill(sig)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop every node (SIGTERM, then SIGKILL); returns True if one was running."""
        # every node at once: the last ones cannot shut down cleanly once the quorum is gone
        pids = {node.node_id: node.terminate() for node in self.nodes}
        stopped = any([node.stop(timeout_s, pid=pids[node.node_id]) for node in self.nodes if pids[node.node_id] is not None])
        if self.pointer is not None and self.pointer.is_file():
            with contextlib.suppress(OSError, ValueError, KeyError):
                if json.loads(self.pointer.read_text())["home"] == str(self.home):
                    self.pointer.unlink()
        return stopped

    def leaders(self, timeout_s: float = 10.0) -> dict[int, list[str]]:
        """node id -> the partitions ("topic/p") it leads now, as the cluster's metadata says."""
        from confluent_kafka.admin import AdminClient

        md = AdminClient(librdkafka(self.settings, {"socket.timeout.ms": 3000})).list_topics(timeout=timeout_s)
        out: dict[int, list[str]] = {n.node_id: [] for n in self.nodes}
        for name, topic in sorted(md.topics.items()):
            for p, part in sorted(topic.partitions.items()):
                out.setdefault(part.leader, []).append(f"{name}/{p}")
        return out

    def status(self) -> dict[str, object]:
        nodes = []
        try:
            leads = self.leaders(timeout_s=5.0) if self.is_reachable() else {}
        except Exception:  # noqa: BLE001 - a cluster without a quorum has no metadata to give
            leads = {}
        for node in self.nodes:
            pid = node.pid()
            nodes.append({"node": node.node_id, "pid": pid, "address": node.address,
                          "serving": node.is_serving() if pid is not None else False,
                          "leads": len([p for p in leads.get(node.node_id, []) if not p.startswith("__")]),
                          "home": str(node.home)})
        pid = self.pid()
        return {
            "running": any(n["pid"] is not None for n in nodes),
            "pid": pid,
            "reachable": self.is_reachable() if any(n["pid"] is not None for n in nodes) else False,
            "bootstrap": self.settings.bootstrap,
            "version": self.settings.version,
            "brokers": self.settings.brokers,
            "nodes": nodes,
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


def local_broker(settings: Settings, secure: bool | None = None) -> LocalBroker:
    """The local Kafka of these settings: one node in <home>/kafka, N nodes in <home>/kafka/N-nodes
    (each size its own storage: a quorum's voters are fixed when it is formatted), the jar cache.
    Secured (`secure`, or None: when the settings ask for SASL_SSL) it lives in <that>-secure:
    its storage holds the SCRAM users made when it was formatted."""
    base = settings.home / "kafka"
    n = settings.kafka.brokers
    secure = settings.kafka.security_protocol == "SASL_SSL" if secure is None else secure
    home = (base if n == 1 else base / f"{n}-nodes")
    home = home.with_name(home.name + "-secure") if secure else home
    kafka = client_settings(settings.kafka, home / "tls") if secure else settings.kafka
    return LocalBroker(kafka, home, settings.cache_dir, pointer=local_cluster_pointer(settings.home, settings.kafka.port),
                       secure=secure)


def local_cluster_pointer(home: Path, port: int) -> Path:
    """Where `start` notes how many nodes the local Kafka on `port` has (read by every later command)."""
    return home / "kafka" / f"local-{port}.json"
