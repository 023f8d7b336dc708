"""`sidstream bench ...`: each benchmark lives in its own module and is imported lazily."""

from __future__ import annotations

import importlib

import click

_BENCHES = {
    "pipeline": "sidstream.bench.pipeline",
    "quantize": "sidstream.bench.quantize",
    "encoders": "sidstream.bench.encoders",
    "train": "sidstream.bench.train",
    "soak": "sidstream.bench.soak",
    "backfill": "sidstream.bench.backfill",
    "ids": "sidstream.bench.ids",
    "catalog": "sidstream.bench.catalog",
    "online": "sidstream.bench.online",
    "scale": "sidstream.bench.scale",
    "refit": "sidstream.bench.refit",
}


class _LazyBench(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_BENCHES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _BENCHES:
            return None
        module = importlib.import_module(_BENCHES[cmd_name])
        command = module.command
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyBench)
def bench() -> None:
    """Benchmarks (speed, memory) that report ratios against an in-run reference."""
