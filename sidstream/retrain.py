"""The closed retraining loop's inputs and outputs on the running system (the app layer joins
the trainer to the stream, which never import each other).

Inputs: the catalogue's kept embeddings (`embeddings.kept`, text and audio per track, with the
encoder model ids) and the interaction log the streaming logger writes (offline Parquet), over
`train.window_days`. Output: a gated codebook version that goes live through a backfill
(`streams.backfill.run_backfill`), then a ranker trained on the new codes.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka import Producer

from sidcore.catalog import Track
from sidcore.config import Settings
from streams import avro_codec
from streams.admin.topics import TopicNames
from streams.kafka_clients import librdkafka


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
    since = int((time.time() - settings.train.window_days * 86400) * 1000)
    interactions = read_interaction_logs(log_dir, since_ms=since)  # the window pushed into the Parquet scan
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


def synthetic_interactions(tracks: list[Track], users: int = 300, per_user: int = 40, seed: int = 0,
                           now_ms: int | None = None, tags_per_user: int = 1, noise: float = 0.1) -> list[dict[str, Any]]:
    """Interactions of synthetic listeners with tastes: each likes `tags_per_user` tags (drawn by
    how many of the tracks carry them), listens to a liked track half of the time and to any track
    otherwise, and labels a listen 1 when the track carries a liked tag, with a `noise` share of
    labels flipped. Event times spread over the last 7 days. A ranker that reads content (SIDs of
    the tracks' texts, which name their tags) can learn this: MCCA on the 600-artist sample's
    MiniLM embeddings with the default codebooks, 3 seeds: held-out AUC 0.71-0.74 with one tag
    per listener, 0.62-0.63 with two (a labels-shuffled control: 0.49-0.52)."""
    rng = random.Random(seed)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    by_tag: dict[str, list[str]] = {}
    for t in tracks:
        for tag in t.tags:
            by_tag.setdefault(tag, []).append(t.track_id)
    common = sorted((tag for tag, ids in by_tag.items() if len(ids) >= 5), key=lambda tag: (-len(by_tag[tag]), tag))
    if not common:
        raise ValueError("no tag is shared by 5 or more tracks: the synthetic listeners need tags to like")
    ids = [t.track_id for t in tracks]
    out = []
    for u in range(users):
        liked_tags = set(rng.choices(common, weights=[len(by_tag[tag]) for tag in common], k=tags_per_user))
        liked = sorted({i for tag in liked_tags for i in by_tag[tag]})
        for _ in range(per_user):
            track = rng.choice(liked) if rng.random() < 0.5 else rng.choice(ids)
            label = int(track in liked) ^ int(rng.random() < noise)
            out.append({"user_id": f"user{u}", "track_id": track, "event_time": now - rng.randrange(7 * 86_400_000),
                        "label": label})
    return out


def log_synthetic_interactions(run: Any, tracks: list[Track], seed: int = 0) -> int:
    """Produce `synthetic_interactions` of the streamed tracks through the interactions topic;
    returns how many."""
    producer = Producer(librdkafka(run.settings.kafka, {"enable.idempotence": True, "acks": "all"}))
    records = synthetic_interactions(tracks, seed=seed)
    for rec in records:
        producer.produce(run.names.interactions, key=rec["user_id"].encode(), value=avro_codec.encode("Interaction", rec))
    if producer.flush(30):
        raise RuntimeError("interactions not delivered")
    return len(records)


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
    kept = {m: {"refit": (v.get("refit") or {}).get("taken"), "path": (v.get("kept") or {}).get("path")}
            for m, v in (codebooks["metrics"] or {}).items()}
    gate = ranker_manifest.get("gate") or {}
    return {
        "before_version": before,
        "after_version": codebooks["version"],
        "gate": "passed" if backfill is not None else "not promoted",
        "backfilled": backfill["tracks"] if backfill else 0,
        "backfill_tracks_per_s": backfill["tracks_per_s"] if backfill else None,
        "rows_by_version": rows_by_version(s.feast_dir, s.feast_profile, s.redis),
        "ranker_codebook": ranker_manifest.get("codebook_version"),
        "churn": churn,
        "kept": kept,
        "ranker_gate": "passed" if gate.get("passed") else "refused",
        "ranker_auc": gate.get("candidate_auc"),
        "live_ranker_auc": gate.get("live_auc"),
        "ranker_gate_reasons": gate.get("reasons", []),
    }
