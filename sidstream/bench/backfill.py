"""`sidstream bench backfill`: re-coding a catalogue under a new codebook version.

N tracks' kept embeddings (384-d text for all, 200-d audio for a quarter, random but
clustered) are produced to a fresh `embeddings.kept` topic on the local broker; a codebook set
is fitted on them and registered; then `streams.backfill.run_backfill` copies the topic to its
scratch store, codes every track with the assigner's function and writes the rows to a fresh
Feast store. Reported: tracks/s of the whole backfill, and of its three stages timed alone in
the same run (restore from the topic, coding, Feast write), so the slowest one is named.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click
import numpy as np

from streams.kafka_clients import librdkafka


@click.command()
@click.option("--tracks", "n", type=click.IntRange(min=100), default=20_000, show_default=True)
@click.option("--shards", default="1", show_default=True,
              help="shard counts to backfill with, comma-separated (e.g. 1,2: the same catalogue under a fresh version each)")
@click.option("--json", "as_json", is_flag=True)
def command(n: int, shards: str, as_json: bool) -> None:
    """Backfill throughput (tracks/s) on a synthetic kept catalogue, with a stage breakdown."""
    from confluent_kafka import Producer
    from rich.console import Console

    from psrq import joint_embedding
    from sidcore.config import get_settings
    from sidcore.registry import Registry
    from sidstream.harness import PipelineRun
    from streams import avro_codec
    from streams.admin.broker import local_broker
    from streams.backfill import run_backfill
    from streams.records import vector_to_bytes
    from streams.state.kept import kept_key
    from trainer.jobs import register_codebook_set

    console = Console(stderr=True)
    s = get_settings()
    local_broker(s).start()
    run_dir = s.home / "bench" / f"backfill-{time.strftime('%Y%m%dT%H%M%S')}"
    s = s.model_copy(update={"home": run_dir / "home", "feast_root": run_dir / "feast", "registry_root": run_dir / "registry"})
    run = PipelineRun(s, run_dir)
    run.create_topics()
    s = run.worker_settings
    rng = np.random.default_rng(0)
    centres_t, centres_a = rng.standard_normal((64, 384)), rng.standard_normal((32, 200))
    T = (centres_t[rng.integers(0, 64, n)] + 0.3 * rng.standard_normal((n, 384))).astype(np.float32)
    with_audio = np.arange(n) % 4 == 0
    A = (centres_a[rng.integers(0, 32, with_audio.sum())] + 0.3 * rng.standard_normal((with_audio.sum(), 200))).astype(np.float32)
    ids = [f"bf:{i:08d}" for i in range(n)]
    console.print(f"producing {n} kept text and {int(with_audio.sum())} audio embeddings...")
    p = Producer(librdkafka(s.kafka, {"linger.ms": 20}))
    now = int(time.time() * 1000)
    audio_rows = iter(A)
    for i, t in enumerate(ids):
        for modality, vec in (("text", T[i]), *((("audio", next(audio_rows)),) if with_audio[i] else ())):
            value = avro_codec.encode("Embedding", {"track_id": t, "event_time": now, "modality": modality,
                                                    "model_id": f"{modality}-model", "dim": len(vec),
                                                    "vector": vector_to_bytes(vec), "ingest_time": now})
            p.produce(run.names.kept, key=kept_key(t, modality), value=value, partition=i % s.kafka.partitions)
        if i % 1000 == 0:
            p.poll(0)
    p.flush(120)
    from psrq.fitting import fit_codebook_set

    quantizers = fit_codebook_set({"text": T, "audio": A, "joint": joint_embedding(T[with_audio], A)}, s.codebook)
    by_shards: dict[str, Any] = {}
    for k in [int(x) for x in shards.split(",") if x]:
        version = register_codebook_set(Registry(s.registry_dir), quantizers, {"bench": "backfill"}, False,
                                        manifests_extra={"encoder_model_ids": {"text": "text-model", "audio": "audio-model"}})
        console.print(f"backfilling {n} tracks under {version.version} in {k} shard(s)...")
        report = run_backfill(s, version.version, run.names.kept, None, grace_s=0.0, identity_topic=run.names.identity, shards=k)
        by_shards[str(k)] = {"seconds": report["seconds"], "tracks_per_s": report["tracks_per_s"],
                             "per_shard_tracks_per_s": [p["tracks_per_s"] for p in report["per_shard"] or []]}
    first = by_shards[min(by_shards, key=int)]
    for row in by_shards.values():
        row["vs_fewest_shards"] = round(row["tracks_per_s"] / first["tracks_per_s"], 3)
    restore_s, code_s, write_s = _stages(s, run, run_dir, version)
    out = {"bench": "backfill", "tracks": n, "with_audio": int(with_audio.sum()), "store": s.feast_profile,
           "chunk": s.stream.backfill_chunk, "backfill_s": first["seconds"], "tracks_per_s": first["tracks_per_s"],
           "by_shards": by_shards, "cores": os.cpu_count(),
           "stages_tracks_per_s": {"restore_from_topic": round(n / restore_s, 1), "code": round(n / code_s, 1),
                                   "feast_write": round(n / write_s, 1)}}
    click.echo(json.dumps(out) if as_json else json.dumps(out, indent=2))


def _stages(s: Any, run: Any, run_dir: Any, version: Any) -> tuple[float, float, float]:
    """The backfill's three stages alone, same data, same process: restore, code, Feast write (s)."""
    from psrq import joint_embedding, load_codebook_set
    from streams.assign import code_tracks
    from streams.backfill import _rows
    from streams.codebooks import ActiveCodebooks
    from streams.identity import TableIdentities
    from streams.records import BatchResult
    from streams.sinks.store import open_store
    from streams.sinks.writer import FeastSink
    from streams.state.kept import KeptEmbeddings

    kept = KeptEmbeddings(run_dir / "stage-kept.sqlite", wait_s=0)
    t0 = time.perf_counter()
    kept.restore_from(s.kafka, run.names.kept)
    restore_s = time.perf_counter() - t0
    active = ActiveCodebooks(version.version, load_codebook_set(version.path))
    code_s, rows, identities = 0.0, [], TableIdentities()  # in memory: this stage alone, no claim round trips
    for chunk_ids, entries in kept.iter_tracks(chunk=s.stream.backfill_chunk):
        t1 = time.perf_counter()
        result = BatchResult()
        code_tracks(result, chunk_ids, entries, active, joint_embedding, identities)
        rows.append(_rows(result))
        code_s += time.perf_counter() - t1
    sink = FeastSink(open_store(run_dir / "feast-stage", profile=s.feast_profile, redis_url=s.redis))
    t2 = time.perf_counter()
    for chunk in rows:
        sink.write(chunk)
    return restore_s, code_s, time.perf_counter() - t2
