"""The closed retraining loop's inputs and outputs on the running system (the app layer joins
the trainer to the stream, which never import each other).

Inputs: the catalogue's kept embeddings (`embeddings.kept`, text and audio per track, with the
encoder model ids) and the interaction log the streaming logger writes (offline Parquet), over
`train.window_days`. Output: a gated codebook version that goes live through a backfill
(`streams.backfill.run_backfill`), then a ranker trained on the new codes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from sidcore.config import Settings
from streams.admin.topics import TopicNames


def system_dataset(settings: Settings, scratch: Path) -> tuple[Any, dict[str, str]]:
    """(trainer Dataset, encoder model ids) from the kept embeddings and the interaction log."""
    from streams.backfill import catalog_embeddings
    from trainer.dataset import Dataset, DatasetContractError, read_interaction_logs

    names = TopicNames(settings.kafka.topic_prefix)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    scratch.unlink(missing_ok=True)
    ids, embeddings, model_ids = catalog_embeddings(settings, names.kept, scratch)
    if not ids:
        raise DatasetContractError(f"no kept embeddings in {names.kept} on {settings.kafka.bootstrap}: "
                                   "stream tracks first (or give --data)")
    log_dir = settings.feast_dir / "offline" / "interactions"
    interactions = read_interaction_logs(log_dir)
    since = int((time.time() - settings.train.window_days * 86400) * 1000)
    interactions = interactions[interactions["timestamp"] >= since].reset_index(drop=True)
    if interactions.empty:
        raise DatasetContractError(f"no interactions in the last {settings.train.window_days:g} days in {log_dir}")
    items = pd.DataFrame({"item_id": ids})
    ds = Dataset(interactions, items, embeddings=embeddings, embedding_ids=ids,
                 info={"source": "system", "kept_topic": names.kept, "interaction_log": str(log_dir)})
    return ds, model_ids


def backfill_promoter(settings: Settings, on_progress: Any = None, fail_after_tracks: int | None = None) -> Any:
    """on_promote for trainer jobs: re-code the catalogue under the version, then make it live."""
    from streams.backfill import run_backfill

    names = TopicNames(settings.kafka.topic_prefix)
    reports: list[dict[str, Any]] = []

    def promote(version: Any) -> None:
        reports.append(run_backfill(settings, version.version, names.kept, names.control, identity_topic=names.identity, on_progress=on_progress,
                                    fail_after_tracks=fail_after_tracks))

    promote.reports = reports  # type: ignore[attr-defined]
    return promote


def log_synthetic_interactions(run: Any, track_ids: list[str], users: int = 40, per_user: int = 15, seed: int = 0) -> int:
    """Produce synthetic interactions for streamed tracks through the interactions topic (each
    user favours a slice of the catalogue, so there is something to learn); returns how many."""
    import random

    from confluent_kafka import Producer

    from streams import avro_codec

    rng = random.Random(seed)
    now = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": run.settings.kafka.bootstrap, "enable.idempotence": True, "acks": "all"})
    n = 0
    for u in range(users):
        start = rng.randrange(len(track_ids))
        liked = {track_ids[(start + k) % len(track_ids)] for k in range(max(3, len(track_ids) // 10))}
        for _ in range(per_user):
            track = rng.choice(sorted(liked)) if rng.random() < 0.6 else rng.choice(track_ids)
            rec = {"user_id": f"user{u}", "track_id": track, "event_time": now - rng.randrange(7 * 86_400_000),
                   "label": int(track in liked)}
            producer.produce(run.names.interactions, key=rec["user_id"].encode(), value=avro_codec.encode("Interaction", rec))
            n += 1
    if producer.flush(30):
        raise RuntimeError("interactions not delivered")
    return n


def wait_logged(feast_dir: Path, expected: int, timeout_s: float = 120.0) -> int:
    """Wait until the logger's offline interaction log holds `expected` distinct rows."""
    from streams.sinks.interaction_log import interaction_log

    deadline = time.monotonic() + timeout_s
    have = 0
    while time.monotonic() < deadline:
        folder = feast_dir / "offline" / "interactions"
        have = interaction_log(folder).count() if folder.is_dir() else 0
        if have >= expected:
            return have
        time.sleep(0.5)
    raise TimeoutError(f"only {have} of {expected} interactions logged after {timeout_s:.0f}s")


def cron_command(settings_file: Path) -> list[str]:
    """The CronJob's exact command (deploy/k8s/trainer-cronjob.yaml), for this run's settings."""
    import sys

    import yaml

    manifest = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "trainer-cronjob.yaml").read_text())
    command = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "sidstream"
    return [sys.executable, "-m", "sidstream.cli", "--settings", str(settings_file), *command[1:], "--json"]


def retrain_once(run: Any, before: str, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run the CronJob's command against this run; the one JSON line of `demo --retrain`."""
    import json
    import subprocess

    from sidcore.registry import Registry
    from streams.sinks.reader import rows_by_version

    settings_file = run.settings_file()
    proc = subprocess.run(cron_command(settings_file), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"`sidstream train all` failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    codebooks = next(x for x in lines if x["kind"] == "codebooks")
    backfill = next((x for x in lines if x["kind"] == "backfill"), None)
    ranker = next(x for x in lines if x["kind"] == "ranker")
    s = run.worker_settings
    ranker_manifest = Registry(s.registry_dir).get("ranker", ranker["version"]).manifest
    churn = {m: (v.get("churn_vs_parent") or {}).get("full_sid") for m, v in (codebooks["metrics"] or {}).items()}
    return {
        "before_version": before,
        "after_version": codebooks["version"],
        "gate": "passed" if backfill is not None else "not promoted",
        "backfilled": backfill["tracks"] if backfill else 0,
        "backfill_tracks_per_s": backfill["tracks_per_s"] if backfill else None,
        "rows_by_version": rows_by_version(s.feast_dir, s.feast_profile, s.redis_url),
        "ranker_codebook": ranker_manifest.get("codebook_version"),
        "churn": churn,
    }
