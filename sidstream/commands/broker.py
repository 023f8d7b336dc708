"""`sidstream broker start|stop|status|kill|start-node`: the local Kafka, one node or a cluster."""

from __future__ import annotations

import json
import sys

import click

from sidcore.config import get_settings, with_brokers
from streams.admin.broker import BrokerError, LocalBroker, local_broker
from streams.kafka_clients import describe


def _cluster(brokers: int | None = None, secure: bool | None = None) -> LocalBroker:
    s = get_settings()
    s = with_brokers(s, brokers)
    return local_broker(s, secure=secure or None)


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.group()
def broker() -> None:
    """The local Kafka (KRaft, Maven-resolved jars): one node, or a cluster of N on loopback."""


@broker.command()
@click.option("--brokers", type=click.IntRange(1, 9), default=None,
              help="nodes of the local cluster (default kafka.brokers, or what this home runs); each node n "
                   "listens on kafka.port + 2(n-1); later commands of this home find N in <home>/kafka/local-<port>.json")
@click.option("--secure", is_flag=True, help="a SASL_SSL (SCRAM) client listener with a throwaway CA in "
              "<home>/kafka[...]-secure/tls; later commands of this home log in through it (docs/security.md)")
@click.option("--timeout", default=90.0, show_default=True, help="seconds to wait for the broker(s)")
def start(brokers: int | None, secure: bool, timeout: float) -> None:
    """Resolve jars (once), format storage (once), start every node and wait until each serves metadata."""
    b = _cluster(brokers, secure)
    try:
        pid = b.start(timeout_s=timeout)
    except BrokerError as exc:
        _fail(exc)
    who = f"pids {list(b.pids().values())}" if pid is not None else "reused; not started from this home"
    nodes = b.settings.brokers
    click.echo(f"kafka {b.settings.version} running on {describe(b.settings)} ({nodes} node{'s' * (nodes > 1)}, {who})")
    if b.secure:  # where a client elsewhere finds the log-in: file paths only, never the password
        k = b.settings
        click.echo(f"clients: SIDSTREAM_KAFKA__SECURITY_PROTOCOL=SASL_SSL SIDSTREAM_KAFKA__SASL_USERNAME={k.sasl_username} "
                   f"SIDSTREAM_KAFKA__SASL_PASSWORD_FILE={k.sasl_password_file or '<yours>'} "
                   f"SIDSTREAM_KAFKA__SSL_CA_FILE={k.ssl_ca_file}")


@broker.command()
def stop() -> None:
    """Stop every node cleanly (no orphan JVM)."""
    stopped = _cluster().stop()
    click.echo("stopped" if stopped else "not running")


@broker.command()
@click.argument("node", type=int)
@click.option("--signal", "sig", type=click.Choice(["KILL", "STOP", "CONT", "TERM"]), default="KILL", show_default=True,
              help="KILL: kill -9 (a crash); STOP / CONT: pause and resume the JVM (a zombie); TERM: clean stop")
def kill(node: int, sig: str) -> None:
    """Send a signal to one node of the local cluster (drills)."""
    import signal

    try:
        pid = _cluster().kill(node, getattr(signal, f"SIG{sig}"))
    except BrokerError as exc:
        _fail(exc)
    click.echo(f"node {node} (pid {pid}): SIG{sig}")


@broker.command("start-node")
@click.argument("node", type=int)
@click.option("--timeout", default=90.0, show_default=True)
def start_node(node: int, timeout: float) -> None:
    """Start one node of the local cluster again (after `broker kill NODE`)."""
    try:
        pid = _cluster().start_node(node, timeout_s=timeout)
    except BrokerError as exc:
        _fail(exc)
    click.echo(f"node {node} running (pid {pid})")


@broker.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Each node: pid, address, serving, partitions it leads (exit 3 when the cluster is unreachable)."""
    st = _cluster().status()
    if as_json:
        click.echo(json.dumps(st))
    else:
        for k, v in st.items():
            if k != "nodes":
                click.echo(f"{k:10s} {v}")
        for n in st["nodes"]:  # type: ignore[attr-defined]
            click.echo(f"node {n['node']}: pid {n['pid']} {n['address']} serving={n['serving']} leads {n['leads']} partitions")
    sys.exit(0 if st["reachable"] else 3)
