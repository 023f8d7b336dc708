"""The broker: a real Apache Kafka 3.9.x (KRaft) started by the project's own manager
(streams.admin.broker) once per test session on free loopback ports."""

from __future__ import annotations

import socket

import pytest

from sidcore.config import KafkaSettings, Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    from streams.admin.broker import LocalBroker

    settings = KafkaSettings(port=free_port(), controller_port=free_port(), partitions=2, heap="384m")
    broker = LocalBroker(settings, tmp_path_factory.mktemp("kafka"), Settings().cache_dir)
    broker.start(timeout_s=120)
    yield broker
    broker.stop()
