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

from sidstream.catalog import (
    Track,
    audio_tracks,
    audio_windows,
    embed_texts_cached,
    fit_catalog_codebooks,
    lastfm_tracks,
)
from sidstream.config import Settings, get_settings
from sidstream.registry import Registry
from streams import avro_codec
from streams.harness import PipelineRun, wait_until_readable

log = logging.getLogger(__name__)


def ensure_codebooks(settings: Settings, tracks: list[Track], audio: list[Track], console: Console) -> str:
    """Return the live codebook version, fitting and registering one from the catalog if none."""
    registry = Registry(settings.registry_dir)
    live = registry.live("codebooks")
    if live is not None:
        return live.version
    from encoders import load_audio_encoder, load_text_encoder

    e = settings.encoders
    with console.status("fitting the first codebook version from the catalog (cached afterwards)..."):
        te = load_text_encoder(e.text_model_dir, device=e.device, dtype=e.dtype, max_length=e.max_length, token_budget=e.token_budget)
        catalog = lastfm_tracks(settings.lastfm_dir)
        text_X = embed_texts_cached(settings, te, [t.text for t in catalog])
        audio_X = audio_text_X = None
        audio_model_id = ""
        if audio:
            ae = load_audio_encoder(e.audio_model, sample_rate=e.sample_rate, window_s=e.audio_window_s, max_windows=e.audio_max_windows)
            audio_X, owners = audio_windows([t.audio_path for t in audio if t.audio_path], ae, e.audio_window_s, max_windows=8)
            audio_text_X = np.asarray(te.encode([audio[i].text for i in owners.tolist()]), dtype=np.float32)
            audio_model_id = ae.model_id
        version = fit_catalog_codebooks(settings, text_X, te.model_id, audio_X, audio_text_X, audio_model_id)
    console.print(f"fitted codebook version [bold]{version.version}[/] on {len(text_X)} catalog texts")
    return version.version


def run_demo(settings: Settings, n_tracks: int, n_audio: int, bad: bool, timeout_s: float, console: Console) -> dict[str, Any]:
    from streams.broker import local_broker
    from streams.feast_store import open_store

    t0 = time.monotonic()
    broker = local_broker(settings.kafka, settings.home / "kafka", settings.cache_dir)
    with console.status(f"starting (or reusing) the local Kafka {settings.kafka.version} broker..."):
        broker.start()
    tracks = lastfm_tracks(settings.lastfm_dir if settings.lastfm_dir.is_dir() else None, n_tracks)
    audio = audio_tracks(settings.audio_dir, n_audio)
    if len(audio) < n_audio:
        console.print(f"[yellow]only {len(audio)} recordings under {settings.audio_dir} (install Debian's singularity-music)[/]")
    version = ensure_codebooks(settings, tracks, audio, console)

    run_dir = settings.home / "demo" / time.strftime("%Y%m%dT%H%M%S")
    # each run has its own topics and Feast store, so its counts are exactly its own
    settings = settings.model_copy(update={"feast_root": run_dir / "feast", "registry_root": settings.registry_dir})
    run = PipelineRun(settings, run_dir)
    run.create_topics()
    store = open_store(settings.feast_dir, profile=settings.feast_profile, redis_url=settings.redis_url)
    with console.status("starting workers (encoders | assigner + Feast writer)..."):
        run.start_workers()
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
            latency = wait_until_readable(store, expected, produced_at, timeout_s, on_progress=lambda n: progress.update(task, completed=n))
        dead = run.count_dlq()
    finally:
        run.stop_workers()
    from streams.feast_store import read_sids

    sample = read_sids(store, [t.track_id for t in (tracks[:3] + audio[:2])])
    lat = np.array(list(latency.values())) if latency else np.array([np.nan])
    summary = {
        "tracks": len(expected),
        "assigned": len(latency),
        "dlq": sum(len(v) for v in dead.values()),
        "feast_read": len(latency),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1)},
        "broker": f"kafka {settings.kafka.version}",
    }
    _print_summary(console, summary, dead, sample, version, run, time.monotonic() - t0, len(tracks), len(audio))
    return summary


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
@click.option("--audio-dir", type=click.Path(path_type=Path), default=None, help="folder of audio files (default: settings.audio_dir)")
@click.option("--no-bad", is_flag=True, help="do not send the two deliberately bad records")
@click.option("--timeout", default=240.0, show_default=True, help="seconds to wait for Feast")
@click.option("--json", "as_json", is_flag=True, help="end with exactly one JSON summary line")
@click.option("--keep", is_flag=True, help="keep this run's directory (worker logs, Feast store)")
def demo(n_tracks: int, n_audio: int, audio_dir: Path | None, no_bad: bool, timeout: float, as_json: bool, keep: bool) -> None:
    """Stream real tracks through encoders and the PSRQ assigner into a local Feast store."""
    settings = get_settings()
    if audio_dir is not None:
        settings = settings.model_copy(update={"audio_dir": audio_dir})
    console = Console(stderr=as_json)
    summary = run_demo(settings, n_tracks, n_audio, not no_bad, timeout, console)
    if not keep:
        _clean_old_runs(settings.home / "demo", keep_last=1)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    if summary["feast_read"] < summary["tracks"]:
        sys.exit(1)


def _clean_old_runs(root: Path, keep_last: int) -> None:
    runs = sorted(p for p in root.glob("*") if p.is_dir())
    for p in runs[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)

