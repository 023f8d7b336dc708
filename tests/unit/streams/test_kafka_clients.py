"""One module builds every Kafka client's connection: librdkafka and Faust/aiokafka agree, and
no module builds a client config of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from sidcore.config import REPO_ROOT, KafkaSettings
from streams.admin.certs import make_server_cert
from streams.kafka_clients import faust_credentials, librdkafka

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_server_cert(tmp_path_factory.mktemp("ca"))


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_librdkafka_and_faust_clients_get_the_same_connection(protocol, ca, tmp_path):
    password = tmp_path / "pw"
    password.write_text("rotating-secret\n")
    kafka = KafkaSettings(bootstrap_servers="b1:9093,b2:9093", security_protocol=protocol, sasl_mechanism="SCRAM-SHA-256",
                          sasl_username="svc", sasl_password_file=password, ssl_ca_file=ca.ca_file)
    rd = librdkafka(kafka, {"group.id": "g"})
    aio = credentials_to_aiokafka_auth(faust_credentials(kafka))
    assert rd["bootstrap.servers"] == "b1:9093,b2:9093" and rd["group.id"] == "g"
    assert rd["security.protocol"].upper() == aio["security_protocol"] == protocol
    if protocol.startswith("SASL"):
        assert (rd["sasl.mechanism"], rd["sasl.username"], rd["sasl.password"]) == \
               (aio["sasl_mechanism"], aio["sasl_plain_username"], aio["sasl_plain_password"]) == \
               ("SCRAM-SHA-256", "svc", "rotating-secret")
    else:
        assert "sasl.username" not in rd
    if "SSL" in protocol:
        assert rd["ssl.ca.location"] == str(ca.ca_file)
        assert [c["subject"] for c in aio["ssl_context"].get_ca_certs()] == [((("commonName", "sidstream local CA"),),)]
        assert aio["ssl_context"].check_hostname
    else:
        assert aio.get("ssl_context") is None and "ssl.ca.location" not in rd


def test_a_password_file_is_read_again_when_rotated(tmp_path):
    password = tmp_path / "pw"
    password.write_text("old")
    kafka = KafkaSettings(security_protocol="SASL_SSL", sasl_username="u", sasl_password_file=password)
    assert librdkafka(kafka)["sasl.password"] == "old"
    password.write_text("new")
    assert librdkafka(kafka)["sasl.password"] == "new"


def test_a_caller_cannot_override_the_connection():
    with pytest.raises(ValueError, match="security.protocol"):
        librdkafka(KafkaSettings(), {"security.protocol": "plaintext"})


def _client_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name in ("Producer", "Consumer", "AdminClient"):
                yield node


def test_every_confluent_client_in_the_code_takes_its_config_from_kafka_clients():
    offenders = []
    for package in ("streams", "sidstream", "sidcore", "trainer"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for call in _client_calls(tree):
                arg = call.args[0] if call.args else None
                built = isinstance(arg, ast.Call) and getattr(arg.func, "id", None) == "librdkafka"
                named = isinstance(arg, ast.Name)  # a variable: must itself come from librdkafka (checked below)
                if not (built or named):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{call.lineno}")
                if named:
                    source = Path(path).read_text()
                    if f"{arg.id} = librdkafka(" not in source:
                        offenders.append(f"{path.relative_to(REPO_ROOT)}:{call.lineno} ({arg.id})")
    assert not offenders, f"clients built without streams.kafka_clients.librdkafka: {offenders}"


def test_data_path_timeouts_follow_the_setting() -> None:
    """A hung broker is given up after kafka.request_timeout_s by the data-path librdkafka clients
    (the produce-ack timeout on producers only), and the options pass through `librdkafka`."""
    from sidcore.config import KafkaSettings
    from streams.kafka_clients import data_path_timeouts, librdkafka

    kafka = KafkaSettings(request_timeout_s=6)
    assert data_path_timeouts(kafka) == {"socket.timeout.ms": 6000}
    assert data_path_timeouts(kafka, producer=True) == {"socket.timeout.ms": 6000, "request.timeout.ms": 6000}
    assert data_path_timeouts("127.0.0.1:1")["socket.timeout.ms"] == int(KafkaSettings().request_timeout_s * 1000)
    conf = librdkafka(kafka, {"acks": "all", **data_path_timeouts(kafka, producer=True)})
    assert conf["socket.timeout.ms"] == 6000 and conf["bootstrap.servers"] == kafka.bootstrap
