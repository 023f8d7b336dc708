"""Your own audio encoder (docs/encoders.md), on the real broker and Feast: a codebook version
fitted by `sidstream train codebooks --data DIR` on a folder whose dataset.json names the audio
model "own-encoder/v1"; tracks whose metadata goes through the text worker and whose audio
arrives as embeddings.audio records from that model get joint SIDs in Feast (the SIDs the frozen
codebook gives those vectors); the same tracks' audio from "other-encoder/v2" is dead-lettered
`model_mismatch` naming both ids, and nothing else is lost."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from encoders.catalog import track_text
from sidcore.catalog import lastfm_tracks
from sidstream.harness import PipelineRun, wait_until_readable
from trainer.dataset import Dataset, write_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OWN, OTHER = "own-encoder/v1", "other-encoder/v2"
AUDIO_DIM = 24


def _own_audio(n: int) -> np.ndarray:
    """The "own encoder's" outputs: random but fixed clustered vectors, one per track."""
    rng = np.random.default_rng(33)
    centres = rng.normal(size=(20, AUDIO_DIM))
    return (centres[rng.integers(0, 20, n)] + 0.25 * rng.normal(size=(n, AUDIO_DIM))).astype(np.float32)


@pytest.fixture
def own_encoder_run(test_settings, tmp_path):
    """300 sample artists: their texts (the text worker's encoder) and own-encoder audio in a data
    set folder, a codebook fitted on it through the CLI, and a run with a text worker and the
    assigner + writer (no audio worker: the audio comes as embeddings)."""
    from encoders.configured import configured_text_encoder

    s = test_settings.model_copy(update={"codebook": test_settings.codebook.model_copy(update={"codebook_size": 16})})
    te = configured_text_encoder(s.encoders)
    catalog = lastfm_tracks(None, 300)
    ids = [t.track_id for t in catalog]
    T, A = te.encode([track_text(t) for t in catalog]), _own_audio(len(catalog))
    interactions = pd.DataFrame({"user_id": [f"u{i % 17}" for i in range(len(ids))], "item_id": ids,
                                 "timestamp": np.arange(len(ids), dtype=np.int64) * 1000, "label": 1})
    write_dataset(tmp_path / "data", Dataset(
        interactions, pd.DataFrame({"item_id": ids, "text": [track_text(t) for t in catalog]}),
        {"text": T, "audio": A}, ids, {"name": "own-encoder", "encoder_model_ids": {"text": te.model_id, "audio": OWN}}))
    run = PipelineRun(s, tmp_path / "run")
    fitted = subprocess.run([sys.executable, "-m", "sidstream.cli", "--settings", str(run.settings_file()), "train", "codebooks",
                             "--data", str(tmp_path / "data"), "--json"], capture_output=True, text=True, timeout=600)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    version = next(json.loads(line) for line in fitted.stdout.splitlines() if line.startswith("{"))["version"]
    run.create_topics()
    run.start_workers((("text",), ("assigner", "writer")))
    try:
        yield run, catalog, T, A, version
    finally:
        run.stop_workers()


def _dead_letters(run, topic, n, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    dead = run.dead_letters()
    while len(dead[topic]) < n and time.monotonic() < deadline:
        time.sleep(0.5)
        dead = run.dead_letters()
    return dead


def test_own_audio_embeddings_get_joint_sids_and_another_models_are_dead_lettered(own_encoder_run):
    from psrq import joint_embedding, load_codebook_set
    from sidcore.registry import Registry
    from streams.identity import KafkaIdentities
    from streams.sinks.reader import read_sids
    from streams.sinks.store import open_store

    run, catalog, T, A, version = own_encoder_run
    cs = load_codebook_set(Registry(run.settings.registry_dir).get("codebooks", version).path)
    assert cs.manifest["encoder_model_ids"]["audio"] == OWN  # what the live assigner checks
    own, other = list(range(0, 24)), list(range(24, 36))
    own_ids, other_ids = [catalog[i].track_id for i in own], [catalog[i].track_id for i in other]
    producer = run.producer()
    produced = producer.send_metadata([catalog[i] for i in own + other])
    assert producer.send_audio_embeddings(own_ids, A[own], OWN, ingest_times=produced, dim=AUDIO_DIM) == len(own)
    assert producer.send_audio_embeddings(other_ids, A[other], OTHER, ingest_times=produced) == len(other)
    producer.flush()

    store = open_store(run.settings.feast_dir)
    expected = {t: "joint_sid" for t in own_ids} | {t: "text_sid" for t in other_ids}
    assert len(wait_until_readable(store, expected, produced, 180, version)) == len(expected)
    dlq = run.names.name("embeddings.audio.dlq")
    dead = _dead_letters(run, dlq, len(other))

    # every other-encoder record is a model_mismatch dead letter naming both model ids ...
    assert sorted(r["track_id"] for r in dead[dlq]) == sorted(other_ids)
    assert {r["error_type"] for r in dead[dlq]} == {"model_mismatch"}
    assert all(f"'{OTHER}'" in r["reason"] and f"'{OWN}'" in r["reason"] for r in dead[dlq]), dead[dlq][0]["reason"]
    assert sum(len(v) for v in dead.values()) == len(other)  # ... and nothing else is dead

    df = read_sids(store, own_ids + other_ids, version).set_index("track_id")
    assert df.loc[other_ids, "joint_sid"].isna().all() and df.loc[other_ids, "audio_sid"].isna().all()
    assert df.loc[own_ids + other_ids, "text_sid"].notna().all()
    # the own tracks' SIDs are what the frozen codebook gives the own encoder's vectors (identity
    # codes as the claims log holds them)
    reg = KafkaIdentities(run.settings.kafka.bootstrap, run.names.identity)
    try:
        reg.catch_up()
        for modality, X in (("audio", A[own]), ("joint", joint_embedding(T[own], A[own]))):
            q = cs.codebooks[modality]
            want = reg.held_ids(q, version, modality, own_ids, X) if hasattr(q, "semantic_encode") else cs.encode(modality, X)
            np.testing.assert_array_equal(np.array([list(v) for v in df.loc[own_ids, f"{modality}_sid"]]), want)
    finally:
        reg.close()
    assigned = [r for r in run.assigned() if r["codebook_version"] == version]
    assert {r["audio_model_id"] for r in assigned if r["audio_sid"] is not None} == {OWN}
    assert not {r["track_id"] for r in assigned if r["audio_sid"] is not None} & set(other_ids)
