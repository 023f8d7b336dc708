"""Throwaway TLS material for local services (the secured Kafka, a Redis with tls-port, serve over
HTTPS in tests): a CA and a server certificate for loopback signed by it, made with the `openssl`
command (Debian's openssl package; no Python dependency). Nothing here is for production: a real
deployment brings its own certificates."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


class CertError(RuntimeError):
    """The throwaway certificates cannot be made."""


@dataclass(frozen=True)
class ServerCert:
    ca_file: Path  # PEM: what clients trust
    cert_file: Path  # PEM: the server's certificate
    key_file: Path  # PEM, unencrypted, owner-only


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise CertError("`openssl` not found on PATH (Debian: apt-get install openssl)")
    proc = subprocess.run([binary, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CertError(f"openssl {args[0]} failed: {' '.join(proc.stderr.split())[-500:]}")


def _alt_name(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def make_server_cert(folder: Path, names: tuple[str, ...] = LOOPBACK_NAMES, ca_name: str = "sidstream local CA") -> ServerCert:
    """A new CA and a certificate for `names` (DNS names or IPs) signed by it, as PEM files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)  # the keys are owner-only from the moment they exist
    try:
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        _openssl("req", "-x509", *ec, "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem"),
                 "-days", "30", "-subj", f"/CN={ca_name}", "-addext", "basicConstraints=critical,CA:TRUE")
        _openssl("req", *ec, "-keyout", str(folder / "server.key"), "-out", str(folder / "server.csr"),
                 "-subj", f"/CN={names[0]}")
        (folder / "server.ext").write_text(f"subjectAltName={','.join(_alt_name(n) for n in names)}\n"
                                           "basicConstraints=CA:FALSE\n")
        _openssl("x509", "-req", "-in", str(folder / "server.csr"), "-CA", str(folder / "ca.pem"),
                 "-CAkey", str(folder / "ca.key"), "-CAcreateserial", "-out", str(folder / "server.pem"),
                 "-days", "30", "-extfile", str(folder / "server.ext"))
    finally:
        os.umask(old)
    for public in ("ca.pem", "server.pem"):
        os.chmod(folder / public, 0o644)
    return ServerCert(folder / "ca.pem", folder / "server.pem", folder / "server.key")


def pkcs12_keystore(server: ServerCert, path: Path, password_file: Path) -> Path:
    """The server's key and certificate chain as a PKCS#12 keystore a JVM reads (Kafka's
    ssl.keystore.type=PKCS12), locked with the password in `password_file` (never on argv)."""
    old = os.umask(0o077)
    try:
        _openssl("pkcs12", "-export", "-in", str(server.cert_file), "-inkey", str(server.key_file),
                 "-certfile", str(server.ca_file), "-name", "broker", "-out", str(path),
                 "-passout", f"file:{password_file}")
    finally:
        os.umask(old)
    return path
