"""Re-assign the whole catalogue under a new codebook version, then switch readers and the
assigner to it at one point.

1. PENDING := version (registry pointer) and a control record: assigners now code every new
   embedding under the live version *and* the pending one;
2. after a grace (> the assigners' reload interval + one batch), every embedding that reached
   an assigner before it saw PENDING is in `embeddings.kept`; the backfill copies that topic
   into a scratch store (disk) — all of it, or `RestoreIncomplete` after `stream.restore_stall_s`
   without progress, and then nothing switches: PENDING stays for the next run — then codes every track under the new version with the
   assigner's own function (`streams.assign.code_tracks`) and writes the rows to Feast, in chunks,
   checkpointing the last track written; a killed backfill resumes from the checkpoint;
3. a second pass re-codes the tracks whose kept embeddings changed meanwhile;
4. LIVE := version, PENDING cleared: readers (which ask for the live version's rows) and the
   assigner switch together. Rows of the old version stay, so a rollback is one more backfill.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidcore.config import Settings
from sidcore.registry import Registry
from streams import avro_codec, metrics
from streams.assign import code_tracks
from streams.codebooks import ActiveCodebooks
from streams.kafka_clients import Brokers, librdkafka
from streams.records import BatchResult
from streams.state.kept import KeptEmbeddings

log = logging.getLogger(__name__)
CODEBOOKS = "codebooks"


class InjectedBackfillFailure(RuntimeError):
    """Raised by `fail_after_tracks` to simulate a crash mid-backfill (tests, drills)."""


def _rows(result: BatchResult) -> list[Any]:
    from streams.sinks.writer import SidRow

    return [SidRow.from_record(avro_codec.decode(value, expected="SidAssigned")[1]) for _, value in result.outputs]


def run_backfill(
    settings: Settings, version: str, kept_topic: str, control_topic: str | None = None, chunk: int | None = None,
    grace_s: float | None = None, on_progress: Callable[[str, int, int], None] | None = None,
    fail_after_tracks: int | None = None, identity_topic: str | None = None, shards: int | None = None,
    fail_shard: int | None = None,
) -> dict[str, Any]:
    """Backfill `version` and make it live; returns what was done (tracks, seconds, tracks/s).

    `shards` (default: `stream.backfill_shards`) > 1: the `embeddings.kept` partitions are split over that many processes (shard i
    takes the partitions p with p % shards == i: disjoint tracks, since a track's kept records
    share its partition), each with its own scratch store and checkpoint under
    ``work/backfill-<version>/shard-<i>/``, claiming identity codes through the same topic. The
    switch is made once, here, after every shard finished; a failed shard fails the backfill
    before it (nothing switches), and the next run skips the finished shards and resumes the
    others from their checkpoints. `fail_shard` limits `fail_after_tracks` to one shard (tests)."""
    registry = Registry(settings.registry_dir)
    target = registry.get(CODEBOOKS, version)
    work = settings.home / "work" / f"backfill-{version}"
    work.mkdir(parents=True, exist_ok=True)
    grace_path = work / "graced.json"
    shards = settings.stream.backfill_shards if shards is None else shards
    from streams.sinks.prune import Pruner

    Pruner.forget(prune_progress_path(settings), version)  # a rollback re-backfills a pruned version: prune it anew later
    registry.set_pending(CODEBOOKS, version)
    if control_topic is not None:
        _publish(settings, control_topic, version, str(target.path))
    if not grace_path.is_file() and not (work / "state.json").is_file():
        time.sleep(settings.stream.codebook_reload_grace_s if grace_s is None else grace_s)
    _save(grace_path, {"graced": True})
    started = time.perf_counter()
    if shards <= 1:
        reports = [backfill_shard(settings, version, kept_topic, identity_topic, 0, 1, chunk, on_progress, fail_after_tracks)]
    else:
        reports = _run_shards(settings, version, kept_topic, identity_topic, shards, chunk, fail_after_tracks, fail_shard, work)
    seconds = time.perf_counter() - started
    from streams.sinks.store import open_store

    registry.promote(CODEBOOKS, version)
    registry.set_pending(CODEBOOKS, None)
    if control_topic is not None:
        _publish(settings, control_topic, version, str(target.path))
    store = open_store(settings.feast_dir, profile=settings.feast_profile, redis_url=settings.redis)
    report_prune = prune_old_versions(settings, registry, identity_topic, store)
    coded = sum(r["coded"] for r in reports)
    report = {"version": version, "tracks": sum(r["tracks"] for r in reports), "coded": coded,
              "second_pass": sum(r["second_pass"] for r in reports), "resumed": any(r["resumed"] for r in reports),
              "shards": len(reports), "seconds": round(seconds, 2),
              "tracks_per_s": round(coded / seconds, 1) if seconds > 0 else None,
              "per_shard": [{k: r[k] for k in ("shard", "tracks", "coded", "seconds", "tracks_per_s", "skipped")} for r in reports]
              if shards > 1 else None,
              "pruned": report_prune}
    registry.log_event(CODEBOOKS, {"event": "backfilled", **report})
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return report


def _run_shards(settings: Settings, version: str, kept_topic: str, identity_topic: str | None, shards: int,
                chunk: int | None, fail_after_tracks: int | None, fail_shard: int | None, work: Path) -> list[dict[str, Any]]:
    """Every shard in a child process (`python -m streams.backfill`), all at once; their reports."""
    import subprocess
    import sys

    settings_path = work / "settings.json"
    settings_path.write_text(settings.model_dump_json())
    procs = []
    for i in range(shards):
        fail = fail_after_tracks if fail_shard in (None, i) else None
        args = [sys.executable, "-m", "streams.backfill", str(settings_path), version, kept_topic, identity_topic or "-",
                str(i), str(shards), str(chunk or 0), str(fail or 0)]
        log_path = work / f"shard-{i}.log"
        with open(log_path, "w") as out:
            procs.append((i, subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT), log_path))
    failed = []
    for i, proc, log_path in procs:
        if proc.wait() != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.is_file() else []
            failed.append(f"shard {i} (exit {proc.returncode}): {tail[0] if tail else ''}")
    if failed:
        raise BackfillShardFailed(f"{len(failed)} of {shards} backfill shard(s) failed, the version is not switched "
                                  f"(a rerun resumes them): {'; '.join(failed)}")
    return [json.loads((shard_dir(settings, version, i, shards) / "outcome.json").read_text()) for i in range(shards)]


def shard_dir(settings: Settings, version: str, shard: int, of: int) -> Path:
    """Where a shard keeps its scratch store, checkpoint, report and outcome (one shard keeps the
    unsharded layout, which `sidstream status` reads)."""
    base = settings.home / "work" / f"backfill-{version}"
    return base if of == 1 else base / f"shard-{shard}"


def shard_partitions(bootstrap: Brokers, kept_topic: str, shard: int, of: int, timeout_s: float) -> list[int]:
    """The kept topic's partitions p with p % of == shard."""
    from confluent_kafka import Consumer

    meta = Consumer(librdkafka(bootstrap, {"group.id": f"{kept_topic}.backfill"}))
    try:
        return [p for p in sorted(meta.list_topics(kept_topic, timeout=timeout_s).topics[kept_topic].partitions) if p % of == shard]
    finally:
        meta.close()


class BackfillShardFailed(RuntimeError):
    """A shard of a sharded backfill failed; nothing was switched."""


def backfill_shard(
    settings: Settings, version: str, kept_topic: str, identity_topic: str | None, shard: int, of: int,
    chunk: int | None = None, on_progress: Callable[[str, int, int], None] | None = None,
    fail_after_tracks: int | None = None,
) -> dict[str, Any]:
    """Re-code and write the tracks of the kept partitions p % of == shard under `version`, with
    a checkpoint per chunk (a killed shard resumes there; a finished one is skipped); its report."""
    from psrq import joint_embedding, load_codebook_set
    from streams.sinks.store import open_store
    from streams.sinks.writer import FeastSink

    chunk = chunk or settings.stream.backfill_chunk
    registry = Registry(settings.registry_dir)
    target = registry.get(CODEBOOKS, version)
    work = shard_dir(settings, version, shard, of)
    work.mkdir(parents=True, exist_ok=True)
    state_path, report_path = work / "state.json", work / "report.json"
    if report_path.is_file():
        return {**json.loads(report_path.read_text()), "skipped": True}  # finished in an earlier run
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"last_track": "", "done": 0}
    resumed = state["done"] > 0
    started = time.perf_counter()
    kept = KeptEmbeddings(work / "kept.sqlite", wait_s=0)
    stall_s = settings.stream.restore_stall_s
    partitions = None if of == 1 else shard_partitions(settings.kafka, kept_topic, shard, of, stall_s)
    # all of the kept topic or RestoreIncomplete: a short copy would make a version live with tracks missing
    kept.restore_from(settings.kafka, kept_topic, partitions, stall_s=stall_s)
    total = kept.track_count()
    active = ActiveCodebooks(version, load_codebook_set(target.path))
    sink = FeastSink(open_store(settings.feast_dir, profile=settings.feast_profile, redis_url=settings.redis))
    live = registry.live(CODEBOOKS)
    hint_version = live.version if live is not None and live.version != version else None
    identities = None
    if identity_topic is not None:
        from streams.identity import KafkaIdentities

        identities = KafkaIdentities(settings.kafka, identity_topic, stall_s=stall_s)  # the assigners' arbiter
        identities.catch_up()
    coded = 0

    def write(ids: list[str], entries: dict[str, dict[str, Any]]) -> None:
        result = BatchResult()
        code_tracks(result, ids, entries, active, joint_embedding, identities, hint_version)
        written = sink.write(_rows(result))
        if written.rejected:
            raise RuntimeError(f"the store rejected {len(written.rejected)} backfill rows: {written.rejected[0][1]}")

    for ids, entries in kept.iter_tracks(after=state["last_track"], chunk=chunk):
        write(ids, entries)
        coded += len(ids)
        state.update(last_track=ids[-1], done=state["done"] + len(ids))
        _save(state_path, state)
        metrics.BACKFILL_DONE.labels(version).set(state["done"])
        if on_progress is not None:
            on_progress("backfill", state["done"], total)
        if fail_after_tracks is not None and state["done"] >= fail_after_tracks and state["done"] < total:
            raise InjectedBackfillFailure(f"injected failure after {state['done']} of {total} tracks")
    touched: set[str] = set()
    kept.restore_from(settings.kafka, kept_topic, partitions, stall_s=stall_s, touched=touched)  # changed meanwhile
    tail = sorted(touched)
    for i in range(0, len(tail), chunk):
        write(tail[i : i + chunk], kept.entries(tail[i : i + chunk]))
    seconds = time.perf_counter() - started
    kept.close()
    if identities is not None:
        identities.close()
    report = {"shard": shard, "partitions": partitions, "tracks": total, "coded": coded, "second_pass": len(tail),
              "resumed": resumed, "seconds": round(seconds, 2),
              "tracks_per_s": round(coded / seconds, 1) if seconds > 0 else None, "skipped": False}
    _save(report_path, report)
    (work / "kept.sqlite").unlink(missing_ok=True)
    return report


def prune_progress_path(settings: Settings) -> Path:
    return settings.home / "work" / "prune.json"


def prune_old_versions(settings: Settings, registry: Registry, identity_topic: str | None, store: Any) -> dict[str, Any]:
    """Delete the online rows (and identity claims) of versions outside `train.keep_versions`
    that went live, keeping the live ranker's codebook version; {version: progress}. A failure is
    logged, not raised: the new version is live already, and the next run resumes the prune."""
    from streams.sinks.prune import Pruner, tombstone_claims, versions_to_keep

    ranker = registry.live("ranker")
    ranker_codebook = None if ranker is None else ranker.manifest.get("codebook_version")
    keep = versions_to_keep(registry.live_history(CODEBOOKS), settings.train.keep_versions, (ranker_codebook,))
    claims = None
    if identity_topic is not None:
        def claims(v: str) -> int:
            return tombstone_claims(settings.kafka, identity_topic, v, settings.stream.restore_stall_s)
    try:
        done = Pruner(store, settings.feast_dir, prune_progress_path(settings), settings.stream.backfill_chunk).prune(keep, claims)
    except Exception as exc:  # noqa: BLE001 - the switch is done; pruning resumes at the next run
        log.error("pruning old codebook versions stopped (it resumes at the next run): %s", exc)
        return {"error": str(exc)}
    if done:
        registry.log_event(CODEBOOKS, {"event": "pruned", "keep": sorted(keep), "versions": done})
    return done


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _publish(settings: Settings, topic: str, version: str, path: str) -> None:
    from streams.control import PublishError, publish_codebook_version

    try:
        publish_codebook_version(settings.kafka, topic, version, path)
    except PublishError as exc:  # assigners still see the pointer at their next poll
        log.warning("%s", exc)


def catalog_embeddings(settings: Settings, kept_topic: str, scratch: Path) -> tuple[list[str], dict[str, Any], dict[str, str]]:
    """The catalogue as the stream kept it: (track ids, {modality: float32 [n, d] with NaN rows
    where a track lacks the modality}, {modality: encoder model id}).

    The arrays are memory-mapped .npy files beside `scratch`, filled a chunk of tracks at a time
    from the kept store on disk: the job's memory holds a chunk, not a second copy of the catalogue."""
    import numpy as np

    kept = KeptEmbeddings(scratch, wait_s=0)
    try:
        kept.restore_from(settings.kafka, kept_topic, stall_s=settings.stream.restore_stall_s)
        n = kept.track_count()
        ids: list[str] = []
        out: dict[str, Any] = {}
        model_ids: dict[str, str] = {}
        for chunk_ids, entries in kept.iter_tracks(chunk=5000):
            start = len(ids)
            ids.extend(chunk_ids)
            for m in ("text", "audio"):
                rows = [(start + j, entries[t][m]) for j, t in enumerate(chunk_ids) if m in entries[t]]
                if not rows:
                    continue
                V = np.stack([np.frombuffer(bytes.fromhex(e["vector"]), dtype="<f4") for _, e in rows])
                if m not in out:
                    out[m] = np.lib.format.open_memmap(scratch.with_name(f"{scratch.stem}-{m}.npy"), mode="w+",
                                                       dtype=np.float32, shape=(n, V.shape[1]))
                    out[m][:] = np.nan
                    model_ids[m] = rows[0][1]["model_id"]
                if V.shape[1] != out[m].shape[1]:
                    raise ValueError(f"kept {m} embeddings of two dimensions: {out[m].shape[1]} and {V.shape[1]}")
                out[m][np.fromiter((r for r, _ in rows), dtype=np.int64, count=len(rows))] = V
        return ids, out, model_ids
    finally:
        kept.close()


if __name__ == "__main__":  # one shard of a sharded backfill (run_backfill starts these)
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path, version_arg, kept_arg, identity_arg, shard_arg, of_arg, chunk_arg, fail_arg = sys.argv[1:9]
    shard_settings = Settings.model_validate_json(Path(path).read_text())
    out = backfill_shard(shard_settings, version_arg, kept_arg, None if identity_arg == "-" else identity_arg, int(shard_arg),
                         int(of_arg), int(chunk_arg) or None, None, int(fail_arg) or None)
    # this run's outcome (`skipped` when an earlier run finished the shard), read by run_backfill
    _save(shard_dir(shard_settings, version_arg, int(shard_arg), int(of_arg)) / "outcome.json", out)
