"""`sidstream bench scale`: how an assigner's state behaves as the catalogue grows.

For each size of `--claims`: that many synthetic identity claims (psrq_id's composite codes, a
largest bucket of `--largest-share` of them, the rest spread over 4,096 buckets) are produced to a
fresh ``sids.identity`` topic on the local broker; then, each in a fresh child process so that RSS
is the reader's own:

- **first catch-up**: a reader with an empty state dir reads the whole topic into its on-disk
  store (streams.state.identity_store): seconds, claims/s, RSS over the child's baseline (MB,
  measured after the imports and before the read);
- **restart**: a second reader on the same state dir, as a restarted assigner: seconds from
  construction to caught up, claims it read (the tail: 0 here), RSS over baseline;
- **in memory** (the design before the store, for reference, same run): a reader with no state
  dir reads the whole topic into an in-memory SQLite store.

For `--buckets`: one psrq_id bucket filled with that many tracks, each taking its nearest free
composite identity code (capacity 4x the bucket, K_id = sqrt of it, 64-d residuals), through the
best-first search (`psrq.identity.CompositeQuery`): microseconds per assignment over the last
1,000 tracks (the bucket almost full), rows visited, and the bytes a track's search needs, against
the full distance row of the exhaustive search (timed on the same last 1,000 where it fits).

For `--kept`: that many kept embeddings (8-d: the topic's size is the records, not the vectors)
produced to a fresh ``embeddings.kept`` topic, restored into a fresh KeptEmbeddings store:
seconds and records/s. The backfill is one process (shards are not built): its rate is
`sidstream bench backfill`'s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from streams.kafka_clients import Brokers, librdkafka


def _produce_claims(bootstrap: Brokers, topic: str, n: int, largest_share: float, capacity: int) -> float:
    from confluent_kafka import Producer

    from streams import avro_codec
    from streams.identity import KafkaIdentities, bucket_text

    part = KafkaIdentities(bootstrap, topic)  # for the partitioning of claims by bucket, as assigners do
    part.close()
    p = Producer(librdkafka(bootstrap, {"linger.ms": 50, "batch.num.messages": 10000, "acks": 1,
                  "queue.buffering.max.messages": 1_000_000}))
    rng = np.random.default_rng(0)
    big = int(n * largest_share)
    started = time.perf_counter()
    for i in range(n):
        prefix = [0, 0, 0] if i < big else [int(x) for x in rng.integers(0, 16, 3)]
        code = i if i < big else int(rng.integers(0, capacity))
        rec = {"codebook_version": "vscale", "modality": "text", "prefix": prefix, "code": code % capacity,
               "capacity": capacity, "track_id": f"s{i:09d}", "event_time": 1, "claimer": "bench"}
        key = f"{bucket_text('vscale', 'text', prefix)}|{code}|{rec['track_id']}".encode()
        while True:
            try:
                p.produce(topic, avro_codec.encode("IdentityClaim", rec), key, partition=part.partition_of("vscale", "text", prefix))
                break
            except BufferError:
                p.poll(0.1)
        if i % 10000 == 0:
            p.poll(0)
    p.flush(300)
    return time.perf_counter() - started


def bucket_search(size: int, dim: int = 64, seed: int = 0, block: int = 1000) -> dict[str, Any]:
    """Fill one bucket of `size` tracks by nearest free composite code; time the last `block`."""
    from psrq.identity import CompositeQuery, DenseQuery

    rng = np.random.default_rng(seed)
    k = int(np.ceil(np.sqrt(4 * size)))
    A = (0.5 * rng.standard_normal((k, dim))).astype(np.float32)
    B = (0.2 * rng.standard_normal((k, dim))).astype(np.float32)
    G = 2.0 * (A @ B.T)
    nA, nB = np.einsum("ij,ij->i", A, A), np.einsum("ij,ij->i", B, B)
    taken = np.zeros(k * k, dtype=bool)
    out: dict[str, Any] = {"bucket": size, "k_id": k, "capacity": k * k}
    for start in range(0, size, block):
        R = (0.5 * rng.standard_normal((min(block, size - start), dim))).astype(np.float32)
        dA = np.einsum("ij,ij->i", R, R)[:, None] - 2.0 * (R @ A.T) + nA[None, :]
        part = nB[None, :] - 2.0 * (R @ B.T)
        query = CompositeQuery(dA, part, G)
        last = start + block >= size
        t0 = time.perf_counter()
        codes = []
        for i in range(len(R)):
            code = query.nearest_free(i, taken)
            assert code is not None
            taken[code] = True
            codes.append(code)
        if last:
            seconds = time.perf_counter() - t0
            out.update(us_per_track=round(1e6 * seconds / len(R), 1), rows_visited_per_track=round(query.rows_visited / len(R), 2),
                       search_bytes_per_track=int(4 * (k + k + k)), full_row_bytes_per_track=int(4 * k * k))
            if k * k <= 20_000_000:  # the exhaustive search on the same tracks, same taken codes before each
                for c in codes:
                    taken[c] = False
                t1 = time.perf_counter()
                dense_codes = []
                for i in range(len(R)):
                    row = DenseQuery(((dA[i][:, None] + part[i][None, :]) + G).reshape(1, -1))
                    c = row.nearest_free(0, taken)
                    taken[c] = True  # type: ignore[index]
                    dense_codes.append(c)
                out["exhaustive_us_per_track"] = round(1e6 * (time.perf_counter() - t1) / len(R), 1)
                out["same_codes_as_exhaustive"] = dense_codes == codes
    return out


def _child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "sidstream.bench.scale", *args], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {args[0]} failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss / 2**20)


def child_main(argv: list[str]) -> None:
    """python -m sidstream.bench.scale claims SETTINGS_JSON TOPIC STATE_DIR|- | kept SETTINGS_JSON TOPIC SQLITE

    SETTINGS_JSON: the run's settings file (`PipelineRun.settings_file`: secrets in owner-only
    files beside it), so a child connects as the parent does (SASL/TLS included), and no
    credential is on its command line."""
    from sidcore.config import load_settings

    kind, settings_json, topic, where = argv[:4]
    bootstrap = load_settings(Path(settings_json)).kafka
    if kind == "claims":
        from streams.identity import KafkaIdentities

        base = _rss_mb()
        started = time.perf_counter()
        reg = KafkaIdentities(bootstrap, topic, state_dir=None if where == "-" else Path(where), stall_s=60)
        reg.catch_up()
        seconds = time.perf_counter() - started
        out = {"seconds": round(seconds, 2), "claims_read": reg.claims_read,
               "claims_per_s": round(reg.claims_read / seconds) if seconds > 0 else None,
               "rss_over_baseline_mb": round(_rss_mb() - base, 1), "store_mb": round(reg.store.size_bytes() / 2**20, 1)}
        reg.close()
    else:
        from streams.state.kept import KeptEmbeddings

        base = _rss_mb()
        kept = KeptEmbeddings(Path(where), wait_s=0)
        started = time.perf_counter()
        n = kept.restore_from(bootstrap, topic, stall_s=60)
        seconds = time.perf_counter() - started
        out = {"seconds": round(seconds, 2), "records": n, "records_per_s": round(n / seconds) if seconds > 0 else None,
               "rss_over_baseline_mb": round(_rss_mb() - base, 1)}
    print(json.dumps(out))


@click.command()
@click.option("--claims", default="100000,1000000", show_default=True, help="claim counts, comma-separated")
@click.option("--kept", "kept_n", type=click.IntRange(min=0), default=1_000_000, show_default=True, help="kept embeddings (0: skip)")
@click.option("--largest-share", type=click.FloatRange(0, 1), default=0.035, show_default=True,
              help="share of the claims in the largest bucket (Last.fm's largest fit bucket: 3.5 %)")
@click.option("--buckets", default="10000,100000", show_default=True,
              help="bucket sizes for the identity search timing, comma-separated ('' skips; 1000000 fills for ~20 min on 2 cores)")
@click.option("--json", "as_json", is_flag=True)
def command(claims: str, kept_n: int, largest_share: float, buckets: str, as_json: bool) -> None:
    """Assigner state at catalogue scale: claims catch-up and restart, kept restore (per size)."""
    from confluent_kafka import Producer
    from rich.console import Console

    from sidcore.config import get_settings
    from sidstream.harness import PipelineRun
    from streams import avro_codec
    from streams.admin.broker import local_broker
    from streams.records import vector_to_bytes
    from streams.state.kept import kept_key

    console = Console(stderr=True)
    s = get_settings()
    local_broker(s).start()
    run_dir = s.home / "bench" / f"scale-{time.strftime('%Y%m%dT%H%M%S')}"
    rows: list[dict[str, Any]] = []
    for n in [int(x) for x in claims.split(",") if x]:
        s_n = s.model_copy(update={"kafka": s.kafka.model_copy(update={"topic_prefix": f"scale{n}-{os.getpid()}."})})
        run = PipelineRun(s_n, run_dir / f"claims-{n}")
        run.create_topics()
        capacity = max(4 * int(n * largest_share), 4096)
        console.print(f"producing {n:,} claims (largest bucket {int(n * largest_share):,}, capacity {capacity:,})...")
        produce_s = _produce_claims(s.kafka, run.names.identity, n, largest_share, capacity)
        state = run_dir / f"claims-{n}" / "state"
        settings_json = str(run.settings_file())
        first = _child(["claims", settings_json, run.names.identity, str(state)])
        restart = _child(["claims", settings_json, run.names.identity, str(state)])
        memory = _child(["claims", settings_json, run.names.identity, "-"])
        rows.append({"claims": n, "largest_bucket": int(n * largest_share), "capacity": capacity, "produce_s": round(produce_s, 1),
                     "first_catch_up": first, "restart": restart, "in_memory_store": memory})
        console.print(rows[-1])
    kept_row = None
    if kept_n:
        s_k = s.model_copy(update={"kafka": s.kafka.model_copy(update={"topic_prefix": f"scalekept-{os.getpid()}."})})
        run = PipelineRun(s_k, run_dir / "kept")
        run.create_topics()
        console.print(f"producing {kept_n:,} kept embeddings...")
        p = Producer(librdkafka(s.kafka, {"linger.ms": 50, "queue.buffering.max.messages": 1_000_000}))
        vec = vector_to_bytes(np.ones(8, dtype=np.float32))
        for i in range(kept_n):
            rec = {"track_id": f"k{i:09d}", "event_time": 1, "modality": "text", "model_id": "m", "dim": 8, "vector": vec,
                   "ingest_time": 1}
            while True:
                try:
                    p.produce(run.names.kept, avro_codec.encode("Embedding", rec), kept_key(rec["track_id"], "text"),
                              partition=i % s.kafka.partitions)
                    break
                except BufferError:
                    p.poll(0.1)
        p.flush(300)
        kept_row = {"kept": kept_n, **_child(["kept", str(run.settings_file()), run.names.kept, str(run_dir / "kept" / "kept.sqlite")])}
        console.print(kept_row)
    search = []
    for size in [int(x) for x in buckets.split(",") if x]:
        console.print(f"filling one bucket of {size:,} tracks by nearest free identity code...")
        search.append(bucket_search(size))
        console.print(search[-1])
    out = {"bench": "scale", "claims": rows, "kept_restore": kept_row, "identity_search": search, "cpu_count": os.cpu_count()}
    if as_json:
        click.echo(json.dumps(out))
    else:
        console.print_json(json.dumps(out))


if __name__ == "__main__":
    child_main(sys.argv[1:])
