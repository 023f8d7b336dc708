"""`sidstream demo`: the main job on embedded defaults, end to end on real components.

Starts (or reuses) the local Kafka broker, creates this run's topics, fits a codebook
version from the catalog if none is live (cached in the registry), starts the workers,
produces real tracks (Last.fm artists + real recordings), waits until every track's SIDs
are readable through Feast's get_online_features, and prints what happened.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sidcore.catalog import Track, audio_tracks, lastfm_tracks
from sidcore.config import Settings, get_settings
from sidstream.harness import WORKER_GROUPS, PipelineRun, parse_replicas, wait_until_readable
from streams import avro_codec
from streams.sinks.reader import read_sids
from trainer.bootstrap import ensure_codebooks

log = logging.getLogger(__name__)


def run_demo(settings: Settings, n_tracks: int, n_audio: int, bad: bool, timeout_s: float, console: Console,
             retrain: bool = False, rounds: int = 1, replicas: dict[str, int] | None = None) -> dict[str, Any]:
    from streams.admin.broker import local_broker
    from streams.sinks.store import open_store

    t0 = time.monotonic()
    broker = local_broker(settings)
    with console.status(f"starting (or reusing) the local Kafka {settings.kafka.version} broker..."):
        broker.start()
    source = settings.lastfm_source
    if source is None:
        console.print("no Last.fm-2k folder configured (SIDSTREAM_LASTFM_DIR) and ../shared/data/lastfm-2k absent: "
                      "using the 600-artist sample shipped in sidcore/data/sample")
    tracks = lastfm_tracks(source, n_tracks)
    # each retraining round after the first streams tracks held back until then: a grown catalogue
    # makes a new codebook version, so every round goes live (and prunes what falls out of keep_versions)
    held = HELD_PER_ROUND * (rounds - 1) if retrain else 0
    if held >= len(tracks):
        raise ValueError(f"{rounds} rounds hold back {held} tracks, more than the {len(tracks)} streamed")
    tracks, later = tracks[: len(tracks) - held], tracks[len(tracks) - held :]
    audio = audio_tracks(settings.audio_source, n_audio)
    if len(audio) < n_audio:
        console.print(f"[yellow]only {len(audio)} recordings under {settings.audio_source} (install Debian's singularity-music)[/]")
    with console.status("checking for a live codebook version...") as status:
        version = ensure_codebooks(settings, audio, on_status=status.update)

    run_dir = settings.home / "demo" / time.strftime("%Y%m%dT%H%M%S")
    # each run has its own topics and Feast store, so its counts are exactly its own
    settings = settings.model_copy(update={"feast_root": run_dir / "feast", "registry_root": settings.registry_dir})
    run = PipelineRun(settings, run_dir)
    run.create_topics()
    store = open_store(settings.feast_dir, profile=settings.feast_profile, redis_url=settings.redis)
    groups = (("text", "audio"), ("assigner", "writer", "logger")) if retrain else WORKER_GROUPS
    with console.status("starting workers (encoders | assigner + Feast writer)..."):
        run.start_workers(groups, replicas=replicas)
    try:
        producer = run.producer()
        produced_at = producer.send_metadata(tracks + audio)
        if bad:
            _send_bad_records(producer, run)
        producer.flush()
        producer.send_audio(audio, produced_at)  # audio follows its metadata: joint SIDs arrive late
        producer.flush()
        expected = {t.track_id: "text_sid" for t in tracks} | {t.track_id: "joint_sid" for t in audio}
        with Progress(TextColumn("[bold]tracks readable in Feast"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("feast", total=len(expected))
            latency = wait_until_readable(store, expected, produced_at, timeout_s, version, on_progress=lambda n: progress.update(task, completed=n))
        dead = run.dead_letters()
        emitted = run.assigned()
        final = read_sids(store, list(expected), version)
        sample = read_sids(store, [t.track_id for t in (tracks[:3] + audio[:2])], version)
        retrained = _retrain_rounds(run, store, version, tracks + audio, later, rounds, timeout_s, console) if retrain else None
    finally:
        run.stop_workers()
    lat = np.array(list(latency.values())) if latency else np.array([np.nan])
    summary = {
        "tracks": len(expected),
        **outcome_counts(expected, emitted, final, dead),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1)},
        "broker": f"kafka {settings.kafka.version}",
    }
    _print_summary(console, summary, dead, sample, version, run, time.monotonic() - t0, len(tracks), len(audio))
    if retrained is not None:
        summary["retrain"] = retrained
    return summary


HELD_PER_ROUND = 30  # tracks streamed before each retraining round after the first


def _retrain_rounds(run: PipelineRun, store: Any, version: str, tracks: list[Track], later: list[Track], rounds: int,
                    timeout_s: float, console: Console) -> dict[str, Any]:
    """`rounds` turns of the retraining loop; before each after the first, HELD_PER_ROUND new tracks
    are streamed (readable under the live version) and more interactions logged. The last round's
    summary, with every round's in `rounds`."""
    from sidcore.registry import Registry

    outs: list[dict[str, Any]] = []
    logged = 0
    for r in range(rounds):
        if r > 0:
            new = later[(r - 1) * HELD_PER_ROUND : r * HELD_PER_ROUND]
            producer = run.producer()
            produced_at = producer.send_metadata(new)
            producer.flush()
            version = Registry(run.settings.registry_dir).live("codebooks").version  # type: ignore[union-attr]
            wait_until_readable(store, {t.track_id: "text_sid" for t in new}, produced_at, timeout_s, version)
            tracks = tracks + new
        out = _retrain(run, version, tracks, console, seed=r, logged=logged)
        logged = out.pop("_logged")
        outs.append(out)
    return {**outs[-1], "rounds": outs} if rounds > 1 else outs[0]


def _retrain(run: PipelineRun, version: str, tracks: list[Track], console: Console, seed: int = 0,
             logged: int = 0) -> dict[str, Any]:
    """Log interactions for the streamed tracks, then run the nightly CronJob's command once."""
    from sidstream.retrain import log_synthetic_interactions, retrain_once, wait_logged

    with console.status("logging synthetic interactions through the interactions topic..."):
        n = logged + log_synthetic_interactions(run, tracks, seed=seed)
        wait_logged(run.settings.feast_dir, n)
    with console.status("running the CronJob's `sidstream train all`: refit, gate, backfill, ranker..."):
        out = retrain_once(run, version)
    console.print(f"retrained: codebooks {out['before_version']} -> {out['after_version']} ({out['gate']}), "
                  f"{out['backfilled']} tracks backfilled; ranker on {out['ranker_codebook']}, ranker gate "
                  f"{out['ranker_gate']} (AUC {out['ranker_auc']}, live {out['live_ranker_auc']}); online rows by version "
                  f"{out['rows_by_version']}")
    return {**out, "_logged": n}


def outcome_counts(
    expected: dict[str, str], emitted: list[dict[str, Any]], feast_rows: Any, dead: dict[str, list[Any]]
) -> dict[str, int]:
    """Three counts from three sources: `assigned` from the SID records the assigner emitted,
    `feast_read` from what Feast returns, `dlq` from the dead-letter topics. Each counts the
    expected tracks that have their expected SID column ("text_sid" or "joint_sid") there."""
    emitted_with = {(r["track_id"], column) for r in emitted for column in ("text_sid", "joint_sid") if r.get(column)}
    by_id = feast_rows.set_index("track_id")
    in_feast = sum(1 for t, column in expected.items()
                   if t in by_id.index and _present(by_id.at[t, column]))
    return {
        "assigned": sum(1 for t, column in expected.items() if (t, column) in emitted_with),
        "dlq": sum(len(v) for v in dead.values()),
        "feast_read": in_feast,
    }


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and len(value) > 0


def _send_bad_records(producer: Any, run: PipelineRun) -> None:
    """Two deliberately bad records, to show the dead-letter path: undecodable bytes and empty text."""
    producer.send_raw(run.names.metadata, b"bad:undecodable", b"\x00not avro at all")
    ts = int(time.time() * 1000)
    empty = avro_codec.encode("TrackMetadata", {"track_id": "bad:empty-text", "event_time": ts, "tags": [], "text": "   ", "ingest_time": ts})
    producer.send_raw(run.names.metadata, b"bad:empty-text", empty)


def _print_summary(console: Console, s: dict[str, Any], dead: dict[str, Any], sample: Any, version: str, run: PipelineRun, wall: float, n_text: int, n_audio: int) -> None:
    table = Table(title="sidstream demo", show_header=False)
    table.add_row("broker", f"{s['broker']} on {run.settings.kafka.bootstrap}, topics prefixed {run.prefix!r}")
    table.add_row("codebook version", version)
    table.add_row("tracks produced", f"{s['tracks']} ({n_text} Last.fm artists, {n_audio} with real audio)")
    table.add_row("readable in Feast", f"{s['feast_read']} / {s['tracks']}")
    table.add_row("dead letters", ", ".join(f"{r['error_type']}: {r['reason'][:60]}" for v in dead.values() for r in v) or "0")
    table.add_row("produce -> Feast", f"p50 {s['latency_ms']['p50']} ms, p99 {s['latency_ms']['p99']} ms")
    table.add_row("wall time", f"{wall:.1f} s")
    console.print(table)
    cols = [c for c in ("track_id", "text_sid_str", "audio_sid_str", "joint_sid_str", "modalities") if c in sample.columns]
    console.print(sample[cols].to_string(index=False))


@click.command()
@click.option("--tracks", "n_tracks", default=600, show_default=True, help="Last.fm artists to stream")
@click.option("--audio", "n_audio", default=16, show_default=True, help="recordings to stream (from --audio-dir)")
@click.option("--audio-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="folder of audio files (default: settings.audio_dir)")
@click.option("--no-bad", is_flag=True, help="do not send the two deliberately bad records")
@click.option("--timeout", default=240.0, show_default=True, help="seconds to wait for Feast")
@click.option("--json", "as_json", is_flag=True, help="end with exactly one JSON summary line")
@click.option("--keep", is_flag=True, help="keep this run's directory (worker logs, Feast store)")
@click.option("--retrain", is_flag=True, help="then log interactions and turn the retraining loop once (CronJob's command)")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="with --retrain: turns of the loop; each after the first streams 30 held-back tracks first (a new version)")
@click.option("--replicas", "replicas_spec", default=None, metavar="ROLE=N,...",
              help="worker processes per role (a group of roles runs the most of its roles'), e.g. text=2,assigner=2")
def demo(n_tracks: int, n_audio: int, audio_dir: Path | None, no_bad: bool, timeout: float, as_json: bool, keep: bool,
         retrain: bool, rounds: int, replicas_spec: str | None) -> None:
    """Stream real tracks through encoders and the PSRQ assigner into a local Feast store."""
    try:
        replicas = parse_replicas(replicas_spec)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = get_settings()
    if audio_dir is not None:
        settings = settings.model_copy(update={"audio_dir": audio_dir})
    console = Console(stderr=as_json)
    summary = run_demo(settings, n_tracks, n_audio, not no_bad, timeout, console, retrain, rounds, replicas)
    if not keep:
        _clean_old_runs(settings.home / "demo", keep_last=1)
    if as_json:
        # with --retrain the one JSON line is the loop's (the stream's summary is printed above it on stderr)
        sys.stdout.write(json.dumps(summary.pop("retrain") if retrain else summary) + "\n")
    if summary["feast_read"] < summary["tracks"]:
        sys.exit(1)


def _clean_old_runs(root: Path, keep_last: int) -> None:
    runs = sorted(p for p in root.glob("*") if p.is_dir())
    for p in runs[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)

