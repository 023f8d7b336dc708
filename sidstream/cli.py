"""The single `sidstream` entry point. Subcommand groups live beside the code they drive
and are imported lazily so that `sidstream --help` stays fast."""

from __future__ import annotations

import importlib

import click

from sidstream.logs import setup_logging

# name -> "module:attribute" of a click command or group
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("streams.broker_cli:broker", "Start, stop and inspect the local Kafka (KRaft) broker."),
    "topics": ("streams.topics_cli:topics", "Create and list the pipeline's topics."),
    "worker": ("streams.worker_cli:worker", "Run streaming workers (encoders, assigner, Feast writer)."),
    "demo": ("streams.demo:demo", "Run the main job end to end on embedded defaults."),
    "codebook": ("psrq.cli:codebook", "Fit, assign and report PSRQ / RQ / VQ / PQ / RQ-VAE codebooks."),
    "encode": ("encoders.cli:encode", "Embed text items or audio files with the configured encoders."),
    "train": ("trainer.cli:train", "Retraining jobs: codebooks, ranker, all."),
    "eval": ("trainer.cli:eval_cmd", "Evaluate DIN / DIN+SID / MCCA on a data set."),
    "data": ("trainer.cli:data", "Data sets: convert, fetch, inspect."),
    "bench": ("sidstream.bench.cli:bench", "Benchmarks: pipeline, quantize, encoders, train."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _SUBCOMMANDS:
            return None
        target, _ = _SUBCOMMANDS[cmd_name]
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        command = getattr(module, attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.option("--log-level", default="INFO", show_default=True, help="logging level")
def cli(log_level: str) -> None:
    """sidstream: real-time semantic IDs (PSRQ) for music recommendation."""
    setup_logging(log_level)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
