"""The single `sidstream` entry point (the app layer). Subcommand groups live in
sidstream.commands and are imported lazily so that `sidstream --help` stays fast."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from sidcore.config import AccessRefused, SettingsError, get_settings, load_settings, use_settings
from sidcore.logs import setup_logging

# name -> ("module:attribute" of a click command or group, help line)
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("sidstream.commands.broker:broker", "Start, stop and inspect the local Kafka (KRaft) broker."),
    "topics": ("sidstream.commands.topics:topics", "Create and list the pipeline's topics."),
    "worker": ("sidstream.commands.worker:worker", "Run streaming workers (encoders, assigner, Feast writer)."),
    "demo": ("sidstream.demo:demo", "Run the main job end to end on embedded defaults."),
    "status": ("sidstream.commands.status:status", "Live versions, backfill state, rows per version in Feast."),
    "produce": ("sidstream.commands.produce:produce", "Produce embeddings from your own encoder to embeddings.<modality>."),
    "dlq": ("sidstream.commands.dlq:dlq", "Dead letters: list with reasons, replay to their source topic."),
    "chaos": ("sidstream.chaos:chaos", "Inject a fault into the running pipeline; measure loss and recovery."),
    "codebook": ("sidstream.commands.codebook:codebook", "Fit, assign, report and promote codebooks."),
    "encode": ("sidstream.commands.encode:encode", "Embed text items or audio files with the configured encoders."),
    "train": ("sidstream.commands.train:train", "Retraining jobs: codebooks, ranker, all."),
    "eval": ("sidstream.commands.train:eval_cmd", "Evaluate DIN / DIN+SID / MCCA on a data set."),
    "data": ("sidstream.commands.train:data", "Data sets: convert, fetch, verify."),
    "serve": ("sidstream.commands.serve:serve", "HTTP service: /features, /rank (live ranker), /health, /metrics."),
    "results": ("sidstream.commands.results:results", "Results tables: regenerate, check for staleness, list."),
    "bench": ("sidstream.bench.cli:bench", "Benchmarks: pipeline, quantize, encoders, train."),
}


class UserError(click.ClickException):
    """A failure the user can fix: one line on stderr, exit 1; with --log-level DEBUG the
    traceback of its cause is logged too."""

    def show(self, file: object = None) -> None:
        log = logging.getLogger("sidstream")
        if self.__cause__ is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("cause of the error below", exc_info=self.__cause__)
        super().show(file)  # type: ignore[arg-type]


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _SUBCOMMANDS:
            return None
        target, _ = _SUBCOMMANDS[cmd_name]
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True, help="logging level (DEBUG also logs the traceback behind an error)")
@click.option("--settings", "settings_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="whole settings as JSON (what worker processes get); default: SIDSTREAM_* variables")
def cli(log_level: str, settings_file: Path | None) -> None:
    """sidstream: real-time semantic IDs (PSRQ) for music recommendation."""
    setup_logging(log_level)
    try:
        use_settings(load_settings(settings_file) if settings_file else None)
        get_settings()  # bad settings fail here, in one line, before any work starts
    except SettingsError as exc:
        raise UserError(str(exc)) from exc


def main() -> None:
    try:
        cli(standalone_mode=True)
    except AccessRefused as exc:  # Kafka or Redis refused the credentials: one line, no traceback
        UserError(str(exc)).show()
        sys.exit(1)


if __name__ == "__main__":
    main()
