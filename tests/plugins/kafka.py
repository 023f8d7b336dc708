"""The broker: a real Apache Kafka 3.9.x (KRaft) started by the project's own manager
(streams.admin.broker) once per test session on free loopback ports; and, for the cluster
tests, a three-node KRaft cluster of the same jars (started only when a test asks for it)."""

from __future__ import annotations

import socket

import pytest

from sidcore.config import KafkaSettings, Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(n: int, attempts: int = 50, bus_offset: int | None = None) -> int:
    """The first of `n` consecutive loopback ports that are all free now. `bus_offset`: each port
    + offset must be free too (Redis Cluster's bus: port + 10000, so the block stays <= 55535)."""
    import random

    for _ in range(attempts):
        base = free_port() if bus_offset is None else random.randint(20000, 65535 - bus_offset - n)
        if base + n > 65535:
            continue
        wanted = [*range(base, base + n), *(range(base + bus_offset, base + bus_offset + n) if bus_offset else ())]
        socks = []
        try:
            for p in wanted:
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free loopback ports in {attempts} attempts")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    from streams.admin.broker import LocalBroker

    settings = KafkaSettings(port=free_port(), controller_port=free_port(), partitions=2, heap="384m")
    broker = LocalBroker(settings, tmp_path_factory.mktemp("kafka"), Settings().cache_dir)
    broker.start(timeout_s=120)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory):
    """Three combined controller+broker nodes (3 replicas, 2 in sync), small heaps; stopped by pid."""
    from streams.admin.broker import LocalBroker

    base = free_port_block(6)  # node n: client base + 2(n-1), controller base + 1 + 2(n-1)
    settings = KafkaSettings(port=base, controller_port=base + 1, brokers=3, partitions=2, heap="320m")
    cluster = LocalBroker(settings, tmp_path_factory.mktemp("kafka3"), Settings().cache_dir)
    cluster.start(timeout_s=180)
    yield cluster
    cluster.stop()


SECURE_KAFKA_USER = "sidstream-test"
SECURE_KAFKA_PASSWORD = "PLANTED-kafka-5ecret-91c2"  # tests grep everything for it


@pytest.fixture(scope="session")
def secure_kafka_broker(tmp_path_factory):
    """The project's broker with a SASL_SSL (SCRAM-SHA-512) listener and a throwaway CA
    (`sidstream broker start --secure`); its settings are a client's that logs in."""
    from streams.admin.broker import LocalBroker
    from streams.admin.broker_security import client_settings

    home = tmp_path_factory.mktemp("kafka-secure")
    plain = KafkaSettings(port=free_port(), controller_port=free_port(), partitions=2, heap="384m",
                          sasl_username=SECURE_KAFKA_USER, sasl_password=SECURE_KAFKA_PASSWORD)
    broker = LocalBroker(client_settings(plain, home / "tls"), home, Settings().cache_dir, secure=True)
    broker.start(timeout_s=120)
    yield broker
    broker.stop()
