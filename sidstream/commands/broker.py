"""`sidstream broker start|stop|status`."""

from __future__ import annotations

import json
import sys

import click

from sidcore.config import get_settings
from streams.admin.broker import BrokerError, local_broker


@click.group()
def broker() -> None:
    """The local single-node Kafka (KRaft) broker, from Maven-resolved jars."""


@broker.command()
@click.option("--timeout", default=90.0, show_default=True, help="seconds to wait for the broker")
def start(timeout: float) -> None:
    """Resolve jars (once), format storage (once), start and wait until it serves metadata."""
    try:
        pid = local_broker(get_settings()).start(timeout_s=timeout)
    except BrokerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    b = local_broker(get_settings())
    who = f"pid {pid}" if pid is not None else "reused; not started from this home"
    click.echo(f"kafka {b.settings.version} running on {b.settings.bootstrap} ({who})")


@broker.command()
def stop() -> None:
    """Stop the broker cleanly (no orphan JVM)."""
    stopped = local_broker(get_settings()).stop()
    click.echo("stopped" if stopped else "not running")


@broker.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Is the broker running and reachable?"""
    st = local_broker(get_settings()).status()
    if as_json:
        click.echo(json.dumps(st))
    else:
        for k, v in st.items():
            click.echo(f"{k:10s} {v}")
    sys.exit(0 if st["reachable"] else 3)
