"""The closed retraining loop on the real broker and Feast (SQLite and Redis): tracks and
interactions streamed -> the CronJob's exact command -> a gated new codebook version, the
catalogue backfilled under it and equal to an offline re-coding of the kept embeddings, a
ranker that names it; a text-only refit refused with its reason; a backfill killed midway
that resumes; a rollback that every row follows."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sidcore.config import Settings
from tests.plugins.paths import AUDIO_DIR

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(settings_file, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "sidstream.cli", "--settings", str(settings_file), *args],
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _json_lines(out):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _offline_codes(settings, version, track_ids):
    """What the kept embeddings code to under `version`, computed outside the pipeline."""
    from psrq import joint_embedding, load_codebook_set
    from sidcore.registry import Registry
    from streams.admin.topics import TopicNames
    from streams.state.kept import KeptEmbeddings

    cs = load_codebook_set(Registry(settings.registry_dir).get("codebooks", version).path)
    kept = KeptEmbeddings(settings.home / "check-kept.sqlite", wait_s=0)
    kept.restore_from(settings.kafka.bootstrap, TopicNames(settings.kafka.topic_prefix).kept)
    entries = kept.entries(track_ids)
    kept.close()
    (settings.home / "check-kept.sqlite").unlink()

    def vec(e):
        return np.frombuffer(bytes.fromhex(e["vector"]), dtype="<f4")

    from streams.identity import KafkaIdentities

    # psrq_id: semantic layers from the frozen codebook, identity codes as the claims log decided
    reg = KafkaIdentities(settings.kafka.bootstrap, TopicNames(settings.kafka.topic_prefix).identity)
    reg.catch_up()

    def ids(modality, tracks, X):
        q = cs.codebooks[modality]
        return reg.held_ids(q, version, modality, tracks, X) if hasattr(q, "semantic_encode") else cs.encode(modality, X)

    text = ids("text", track_ids, np.stack([vec(entries[t]["text"]) for t in track_ids]))
    with_audio = [t for t in track_ids if "audio" in entries[t]]
    T = np.stack([vec(entries[t]["text"]) for t in with_audio])
    A = np.stack([vec(entries[t]["audio"]) for t in with_audio])
    joint = ids("joint", with_audio, joint_embedding(T, A))
    reg.close()
    assert len({tuple(r) for r in text.tolist()}) == len(track_ids), "two tracks share a text ID"
    assert len({tuple(r) for r in joint.tolist()}) == len(with_audio), "two tracks share a joint ID"
    return dict(zip(track_ids, text.tolist(), strict=True)), dict(zip(with_audio, joint.tolist(), strict=True))


def _assert_rows_follow(settings, store, version, track_ids):
    from streams.sinks.reader import read_sids

    text, joint = _offline_codes(settings, version, track_ids)
    df = read_sids(store, track_ids, version).set_index("track_id")
    assert df["sid_event_time_ms"].notna().all(), f"tracks without a {version} row"
    assert {t: list(df.at[t, "text_sid"]) for t in track_ids} == text
    assert {t: list(df.at[t, "joint_sid"]) for t in joint} == joint


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def streamed(request, kafka_broker, tmp_path):
    """60 artists + 12 recordings streamed through the pipeline, with interactions logged."""
    from encoders import load_audio_encoder, load_text_encoder
    from encoders.catalog import audio_windows, track_text
    from sidcore.catalog import audio_tracks, lastfm_tracks
    from sidstream.harness import PipelineRun, wait_until_readable
    from sidstream.retrain import log_synthetic_interactions, wait_logged
    from streams.sinks.store import open_store
    from trainer.jobs import bootstrap_codebooks

    if not AUDIO_DIR.is_dir():
        pytest.skip(f"{AUDIO_DIR} missing: apt-get install singularity-music")
    extra = {}
    if request.param == "redis":
        extra = {"feast_profile": "redis", "redis_url": request.getfixturevalue("redis_server")}
    s = Settings(home=tmp_path / "home", kafka=kafka_broker.settings, lastfm_dir="sample",
                 stream={"batch_size": 32, "batch_timeout_s": 0.05, "session_timeout_s": 6.0,
                         "codebook_reload_grace_s": 2.0, "backfill_chunk": 10},
                 encoders={"audio_model": "logmel"}, codebook={"codebook_size": 16}, **extra)
    te, ae = load_text_encoder(), load_audio_encoder("logmel")
    catalog, audio = lastfm_tracks(None, 60), audio_tracks(AUDIO_DIR, 12)
    text_X = te.encode([track_text(t) for t in lastfm_tracks(None, 300)])
    audio_X, owners = audio_windows([t.audio_path for t in audio], ae, 10.0, max_windows=4)
    v0 = bootstrap_codebooks(s, text_X, te.model_id, audio_X, te.encode([track_text(audio[i]) for i in owners.tolist()]),
                             ae.model_id).version
    run = PipelineRun(s, tmp_path / "run")
    run.create_topics()
    store = open_store(run.worker_settings.feast_dir, profile=s.feast_profile, redis_url=s.redis_url)
    run.start_workers((("text", "audio"), ("assigner", "writer", "logger")))
    try:
        producer = run.producer()
        produced = producer.send_metadata(catalog + audio)
        producer.flush()
        producer.send_audio(audio, produced)
        producer.flush()
        expected = {t.track_id: "text_sid" for t in catalog} | {t.track_id: "joint_sid" for t in audio}
        assert len(wait_until_readable(store, expected, produced, 180, v0)) == len(expected)
        ids = sorted(expected)
        wait_logged(s.feast_dir, log_synthetic_interactions(run, catalog + audio))
        yield run, store, v0, ids
    finally:
        run.stop_workers()


def test_the_loop_turns_and_rolls_back(streamed, tmp_path):
    from sidcore.registry import Registry
    from sidstream.retrain import cron_command
    from trainer.dataset import write_dataset
    from trainer.synthetic import make_synthetic

    run, store, v0, ids = streamed
    s = run.worker_settings
    settings_file = run.settings_file()
    registry = Registry(s.registry_dir)

    # 1. the CronJob's exact command, on the system's own inputs
    proc = subprocess.run(cron_command(settings_file), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _json_lines(proc.stdout)
    v1 = next(x for x in lines if x["kind"] == "codebooks")["version"]
    backfill = next(x for x in lines if x["kind"] == "backfill")
    ranker = next(x for x in lines if x["kind"] == "ranker")
    assert v1 != v0 and registry.live("codebooks").version == v1 and registry.pending("codebooks") is None
    assert backfill["tracks"] == len(ids)
    assert registry.get("ranker", ranker["version"]).manifest["codebook_version"] == v1
    assert registry.live("ranker").version == ranker["version"]
    _assert_rows_follow(s, store, v1, ids)

    # 2. a text-only refit is registered but refused by the gate, with its reason
    text_only = tmp_path / "text-only"
    write_dataset(text_only, make_synthetic(n_users=60, n_items=200, events_per_user=20, dim=384,
                                            modalities=("text",), seed=1))
    refused = _cli(settings_file, "train", "codebooks", "--data", str(text_only), check=False)
    assert refused.returncode != 0
    assert "refused by the promotion gate" in refused.stderr and "audio, joint" in refused.stderr
    assert registry.live("codebooks").version == v1

    # 3. a backfill killed while below 100 % resumes and finishes
    killed = _cli(settings_file, "train", "codebooks", "--force", "--fail-after-tracks", "20", "--json", check=False)
    assert killed.returncode != 0 and "injected failure after 20 of" in killed.stderr
    v2 = registry.pending("codebooks").version
    status = json.loads(_cli(settings_file, "status", "--json").stdout)
    assert status["backfill"]["version"] == v2 and 0 < status["backfill"]["done"] < len(ids)
    resumed = _json_lines(_cli(settings_file, "train", "codebooks", "--json").stdout)
    report = next(x for x in resumed if x["kind"] == "backfill")
    assert report["version"] == v2 and report["resumed"] and report["coded"] == len(ids) - 20
    assert registry.live("codebooks").version == v2
    _assert_rows_follow(s, store, v2, ids)

    # 4. a rollback is a new promotion of the older codebook: every row follows it
    rolled = json.loads(_cli(settings_file, "codebook", "promote", v0).stdout.strip().splitlines()[-1])
    assert rolled["promoted"] == v0 and rolled["previous"] == v2
    assert registry.live("codebooks").version == v0
    _assert_rows_follow(s, store, v0, ids)
    assert [e["event"] for e in registry.events("codebooks")][-2:] == ["promoting", "backfilled"]
