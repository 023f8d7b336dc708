"""The local Kafka's SASL_SSL listener (`sidstream broker start --secure`): a throwaway CA and
keystore, SCRAM users created when the storage is formatted, and the server.properties lines.

Files live in `<broker home>/tls/` (owner-only where secret): `ca.pem` (what clients trust),
`broker.p12` (the broker's key and certificate), `client.password` (the client user's password
when the settings bring none), `broker.secrets.json` (keystore and inter-broker passwords).
The users reach `kafka-storage format` as salted SCRAM credentials, never as a clear password
on a command line. The controller listener stays PLAINTEXT on loopback (KRaft quorum only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from sidcore.config import KafkaSettings
from streams.admin.certs import make_server_cert, pkcs12_keystore

ADMIN_USER = "broker-admin"  # the inter-broker user
DEFAULT_CLIENT_USER = "sidstream"
SCRAM_ITERATIONS = 8192


class BrokerSecurityError(RuntimeError):
    """The secured local broker cannot be set up from these settings."""


@dataclass(frozen=True)
class SecureListener:
    tls_dir: Path
    mechanism: str  # SCRAM-SHA-256 | SCRAM-SHA-512
    keystore_password: str
    admin_password: str

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.tls_dir / "broker.p12"

    def properties(self, host: str, client_port: int, controller_port: int) -> list[str]:
        mech = self.mechanism.lower()
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN_USER}" '
                f'password="{self.admin_password}";')
        return [
            f"listeners=SASL_SSL://{host}:{client_port},CONTROLLER://{host}:{controller_port}",
            f"advertised.listeners=SASL_SSL://{host}:{client_port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "inter.broker.listener.name=SASL_SSL",
            f"sasl.enabled.mechanisms={self.mechanism}",
            f"sasl.mechanism.inter.broker.protocol={self.mechanism}",
            f"listener.name.sasl_ssl.{mech}.sasl.jaas.config={jaas}",
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={self.keystore}",
            f"ssl.keystore.password={self.keystore_password}",
            f"ssl.key.password={self.keystore_password}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca_file}",
            "ssl.endpoint.identification.algorithm=https",
        ]


def client_settings(kafka: KafkaSettings, tls_dir: Path) -> KafkaSettings:
    """`kafka` as a client of the secured local broker: SASL_SSL, the broker's CA unless another
    is set (a test of a wrong CA), and a user and password of its own unless the settings name them."""
    if kafka.sasl_mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise BrokerSecurityError(f"the local secured broker speaks SCRAM, not kafka.sasl_mechanism {kafka.sasl_mechanism}")
    update: dict[str, object] = {"security_protocol": "SASL_SSL"}
    if kafka.ssl_ca_file is None:
        update["ssl_ca_file"] = tls_dir / "ca.pem"
    if kafka.sasl_username is None or (kafka.sasl_password is None and kafka.sasl_password_file is None):
        password_file = tls_dir / "client.password"
        if not password_file.is_file():
            tls_dir.mkdir(parents=True, exist_ok=True)
            _write_private(password_file, secrets.token_urlsafe(24))
        update.update({"sasl_username": kafka.sasl_username or DEFAULT_CLIENT_USER, "sasl_password_file": password_file,
                       "sasl_password": None})
    return KafkaSettings(**{**kafka.model_dump(include=kafka.model_fields_set), **update})


def ensure_listener(kafka: KafkaSettings, tls_dir: Path) -> SecureListener:
    """The listener's TLS material and passwords, made once per broker home and reused after."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    stored = tls_dir / "broker.secrets.json"
    if stored.is_file():
        values = json.loads(stored.read_text())
    else:
        values = {"keystore_password": secrets.token_urlsafe(18), "admin_password": secrets.token_urlsafe(18)}
        _write_private(stored, json.dumps(values))
    listener = SecureListener(tls_dir, kafka.sasl_mechanism, values["keystore_password"], values["admin_password"])
    if not listener.keystore.is_file():
        server = make_server_cert(tls_dir / "server", names=tuple(dict.fromkeys((kafka.host, "localhost", "127.0.0.1"))))
        shutil.copyfile(server.ca_file, listener.ca_file)
        password_file = tls_dir / "keystore.password"
        _write_private(password_file, listener.keystore_password)
        pkcs12_keystore(server, listener.keystore, password_file)
    return listener


def scram_format_args(kafka: KafkaSettings, listener: SecureListener) -> list[str]:
    """`kafka-storage format` arguments creating the inter-broker and client users (salted)."""
    users = {ADMIN_USER: listener.admin_password, kafka.sasl_username: kafka.password()}
    args = []
    for user, password in users.items():
        if not user or not password:
            raise BrokerSecurityError("the secured local broker needs kafka.sasl_username and a password")
        args += ["--add-scram", _salted(listener.mechanism, user, password)]
    return args


def _salted(mechanism: str, user: str, password: str) -> str:
    salt = secrets.token_bytes(16)
    algorithm = "sha512" if mechanism.endswith("512") else "sha256"
    salted = hashlib.pbkdf2_hmac(algorithm, password.encode(), salt, SCRAM_ITERATIONS)
    b64 = base64.b64encode
    return (f'{mechanism}=[name={user},iterations={SCRAM_ITERATIONS},salt="{b64(salt).decode()}",'
            f'saltedpassword="{b64(salted).decode()}"]')


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
