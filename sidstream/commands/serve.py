"""`sidstream serve`: the HTTP service for ranking services (sidstream.serve)."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default=None, help="[settings.serve.host]")
@click.option("--port", type=int, default=None, help="[settings.stream.web_port]")
def serve(host: str | None, port: int | None) -> None:
    """Serve /features, /rank, /health and /metrics from the live versions (reloaded without a restart)."""
    from sidcore.config import get_settings
    from sidstream.serve import run

    s = get_settings()
    run(s, host or s.serve.host, port or s.stream.web_port)
