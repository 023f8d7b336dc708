"""Logging set-up for the CLI and workers."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(name)s: %(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)],  # stdout stays for results
        force=True,
    )
    for noisy in ("aiokafka", "faust", "mode", "feast", "urllib3", "httpx", "numba", "matplotlib", "faiss", "faiss.loader"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
