"""Every Kafka client's connection options, built from `KafkaSettings` in one place.

confluent-kafka producers, consumers and admin clients take `librdkafka(kafka, {...})`; the
Faust app (aiokafka underneath) takes `faust_credentials(kafka)`. Both read the same settings
(security protocol, SASL mechanism and log-in, CA, client certificate), so the clients cannot
drift: tests/unit/streams/test_kafka_clients.py holds their options equal and checks that no
module builds a client config of its own. A plain `host:port,...` string still works where a
caller (a test, a drill) has no settings: it means PLAINTEXT.

`check_access` asks the cluster for its metadata once and turns a refusal (wrong password,
unknown CA, plaintext against a TLS listener) into one line, so a command or worker stops at
once instead of retrying forever.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any

import faust
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient

from sidcore.config import AccessRefused, KafkaSettings

Brokers = KafkaSettings | str


class KafkaAccessError(AccessRefused):
    """The cluster refused this client or could not be reached; the message is one line."""


def bootstrap_of(kafka: Brokers) -> str:
    return kafka if isinstance(kafka, str) else kafka.bootstrap


def librdkafka(kafka: Brokers, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """confluent-kafka (librdkafka) config: the connection from `kafka`, then `extra` (group id,
    acks, timeouts: anything but the connection)."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap_of(kafka)}
    if not isinstance(kafka, str):
        conf["security.protocol"] = kafka.security_protocol.lower()
        if kafka.uses_sasl:
            conf.update({"sasl.mechanism": kafka.sasl_mechanism, "sasl.username": kafka.sasl_username,
                         "sasl.password": kafka.password()})
        if kafka.uses_tls:
            conf["ssl.endpoint.identification.algorithm"] = "https"  # the broker's name must match its certificate
            if kafka.ssl_ca_file is not None:
                conf["ssl.ca.location"] = str(kafka.ssl_ca_file)
            if kafka.ssl_cert_file is not None:
                conf["ssl.certificate.location"] = str(kafka.ssl_cert_file)
                conf["ssl.key.location"] = str(kafka.ssl_key_file)
                if kafka.key_password() is not None:
                    conf["ssl.key.password"] = kafka.key_password()
    clash = sorted(set(conf) & set(extra or {}))
    if clash:
        raise ValueError(f"connection options {clash} come from the settings, not from a caller")
    return {**conf, **(extra or {})}


def data_path_timeouts(kafka: Brokers, producer: bool = False) -> dict[str, Any]:
    """librdkafka timeouts of a client on the stream's data path (the assigner's identity claims,
    track producers): a request to a broker that hangs (a paused JVM keeps its connections open and
    answers nothing) is given up after kafka.request_timeout_s, the connection is dropped and the
    metadata refreshed, so the client follows the partition's new leader instead of waiting (by
    default 30-60 s). `producer`: also the produce-ack timeout (a producer-only property)."""
    timeout_ms = int(1000 * (KafkaSettings() if isinstance(kafka, str) else kafka).request_timeout_s)
    out: dict[str, Any] = {"socket.timeout.ms": max(timeout_ms, 1500)}  # librdkafka: >= fetch.wait.max.ms + 1 s
    if producer:
        out["request.timeout.ms"] = timeout_ms
    return out


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of aiokafka (Faust): verifies the broker (and its name) against ssl_ca_file
    or the system's CAs, and presents the client certificate when one is set."""
    if not kafka.uses_tls:
        return None
    context = ssl.create_default_context(cafile=str(kafka.ssl_ca_file) if kafka.ssl_ca_file else None)
    if kafka.ssl_cert_file is not None:
        context.load_cert_chain(str(kafka.ssl_cert_file), str(kafka.ssl_key_file), kafka.key_password())
    return context


def faust_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """Faust's `broker_credentials` for `kafka` (None: PLAINTEXT)."""
    context = ssl_context(kafka)
    if kafka.uses_sasl:
        return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.password(),
                                     ssl_context=context, mechanism=kafka.sasl_mechanism)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def describe(kafka: Brokers) -> str:
    """Where and how a client connects, for logs and errors: never the password."""
    if isinstance(kafka, str) or kafka.security_protocol == "PLAINTEXT":
        return f"{bootstrap_of(kafka)} (PLAINTEXT)"
    who = f", {kafka.sasl_mechanism} as {kafka.sasl_username}" if kafka.uses_sasl else ""
    return f"{kafka.bootstrap} ({kafka.security_protocol}{who})"


_HINTS = (
    ("authentication", "wrong username or password (kafka.sasl_username, kafka.sasl_password[_file])"),
    ("certificate verify failed", "the broker's certificate is not signed by a trusted CA (kafka.ssl_ca_file)"),
    ("incorrect security.protocol", "the listener wants another security protocol (kafka.security_protocol)"),
    ("ssl handshake failed", "TLS handshake failed (kafka.security_protocol, kafka.ssl_ca_file)"),
)


def refusal_line(kafka: Brokers, reason: str) -> str:
    """One line: where, what the broker or client said, and which setting to look at."""
    text = " ".join(reason.split())
    hint = next((h for key, h in _HINTS if key in text.lower()), None)
    return f"Kafka at {describe(kafka)} refused the connection: {hint + ' -- ' if hint else ''}{text}"


def check_access(kafka: Brokers, timeout_s: float = 15.0) -> None:
    """Return once the cluster answers a metadata request; KafkaAccessError (one line) when it
    refuses this client (log-in, TLS, protocol) or nothing answers within `timeout_s`."""
    errors: list[KafkaError] = []
    said = _Collected()  # librdkafka's own log lines, kept off stderr: they repeat on every reconnect
    admin = AdminClient(librdkafka(kafka, {"socket.timeout.ms": 3000, "error_cb": errors.append, "logger": said.logger,
                                           "reconnect.backoff.max.ms": 1000}))
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as exc:  # noqa: BLE001 - a KafkaException; the error callback says why
            last = str(exc)
        admin.poll(0.1)
        refused = _refusal_in(errors) or said.protocol_mismatch()
        if refused:
            raise KafkaAccessError(refusal_line(kafka, refused))
    raise KafkaAccessError(refusal_line(kafka, f"no answer within {timeout_s:.0f}s ({_refusal_in(errors) or last})"))


class _Collected(logging.Handler):
    """A logger for one client that keeps what librdkafka said."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.logger = logging.Logger("sidstream.kafka.check")  # not registered: nothing else sees it
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def protocol_mismatch(self) -> str | None:
        """A listener that closes every connection before it answers the first request wants TLS
        (or SASL) from a client that spoke plaintext."""
        closed = [line for line in self.lines if "Disconnected" in line and "APIVERSION_QUERY" in line]
        if len(closed) < 3:
            return None
        return ("the broker closed every connection before answering its first request: incorrect security.protocol "
                f"(it wants TLS or SASL?); {closed[-1].split(': ', 1)[-1]}")


def _refusal_in(errors: list[KafkaError]) -> str | None:
    """The first error that says the connection itself was refused (not merely down)."""
    refusing = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}  # noqa: SLF001
    for err in errors:
        text = err.str().lower()
        if err.code() in refusing or any(key in text for key, _ in _HINTS):
            return err.str()
    return None
