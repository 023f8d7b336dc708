"""`sidstream serve`: the HTTP service for ranking services (sidstream.serve)."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default=None, help="[settings.serve.host]")
@click.option("--port", type=int, default=None, help="[settings.stream.web_port]")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="uvicorn worker processes, each with its own SID cache and item vectors [settings.serve.workers]")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Serve /features, /rank, /health and /metrics from the live versions (reloaded without a restart)."""
    from sidcore.config import get_settings
    from sidstream.serve import run

    s = get_settings()
    if workers is not None:
        s = s.model_copy(update={"serve": s.serve.model_copy(update={"workers": workers})})
    run(s, host or s.serve.host, port or s.stream.web_port)
