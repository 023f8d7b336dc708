"""The ranker gate (trainer.ranker_gate) and the retraining job that follows it: a ranker trained
on shuffled labels is refused, one worse than the live ranker is refused, a better one passes,
--force-gate promotes with a warning, and the CLI job exits 0 on a refusal that `status` shows."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from sidcore.catalog import lastfm_tracks
from sidcore.config import CodebookSettings, TrainSettings
from sidcore.registry import Registry
from sidstream.retrain import synthetic_interactions
from trainer.dataset import Dataset, write_dataset
from trainer.jobs import JobConfig, train_codebooks, train_ranker
from trainer.models import ModelConfig
from trainer.ranker_gate import RankerGateConfig, gate_ranker, holdout_fraction, weighted_auc
from trainer.train_loop import TrainConfig

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[3]


def test_weighted_auc_is_sklearns_with_ties_and_weights() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    s = np.round(rng.normal(size=3000) + 0.4 * y, 1)  # many ties
    w = rng.integers(0, 4, (4, 3000)).astype(float)
    expected = [roc_auc_score(y, s, sample_weight=wi) for wi in w]
    np.testing.assert_allclose(weighted_auc(y, s, w), expected, rtol=1e-12)
    assert np.isnan(weighted_auc(np.ones(5), s[:5], np.ones((1, 5)))[0])


def test_the_gate_refuses_noise_and_a_worse_candidate_and_passes_a_better_one() -> None:
    rng = np.random.default_rng(1)
    users = rng.integers(0, 150, 4000)
    y = rng.integers(0, 2, 4000)
    good, better, noise = y + rng.normal(size=4000) * 2.0, y + rng.normal(size=4000), rng.normal(size=4000)
    assert gate_ranker(users, y, better, good, "live", 0.02, 0.01).passed
    chance = gate_ranker(users, y, noise, None, None, 0.02, 0.01)
    assert not chance.passed and "not shown above chance" in chance.reasons[0]
    worse = gate_ranker(users, y, noise + 0.3 * y, better, "live", 0.02, 0.01)
    assert not worse.passed and any("worse than the live ranker live" in r for r in worse.reasons)
    assert worse.diff_interval is not None and worse.diff_interval[1] < -0.01


def test_settings_and_holdout_window() -> None:
    assert RankerGateConfig.from_settings(TrainSettings()) == RankerGateConfig()
    day = 86_400_000
    ts = np.array([0, day, 2 * day, 3 * day, 4 * day, 4 * day + 5])
    assert holdout_fraction(ts, None, 0.2) == 0.2
    assert holdout_fraction(ts, 1.0, 0.2) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="must hold some, not all"):
        holdout_fraction(ts, 100.0, 0.2)


# -- the job, on the demo's synthetic listeners ------------------------------------------------------
def _dataset(shuffle_before: float | None = None, seed: int = 0, with_audio: int = 0) -> Dataset:
    """The shipped sample's tracks with multi-hot tag embeddings (content a ranker can read) and
    the demo's listeners; `shuffle_before`: shuffle the labels of that oldest share of rows."""
    tracks = lastfm_tracks(None, 600)
    vocab = sorted({tag for t in tracks for tag in t.tags})
    X = np.zeros((len(tracks), len(vocab)), dtype=np.float32)
    for i, t in enumerate(tracks):
        X[i, [vocab.index(tag) for tag in t.tags]] = 1.0
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-6)
    recs = synthetic_interactions(tracks, users=300, per_user=40, seed=seed, now_ms=1_765_000_000_000)
    inter = pd.DataFrame({"user_id": [r["user_id"] for r in recs], "item_id": [r["track_id"] for r in recs],
                          "timestamp": [r["event_time"] for r in recs], "label": [r["label"] for r in recs]})
    if shuffle_before is not None:
        old = inter["timestamp"] <= inter["timestamp"].quantile(shuffle_before)
        inter.loc[old, "label"] = np.random.default_rng(seed).permutation(inter.loc[old, "label"].to_numpy())
    ids = [t.track_id for t in tracks]
    embeddings = {"text": X}
    if with_audio:  # the demo's shape: audio (here noise) for the first `with_audio` tracks only
        A = np.full((len(tracks), 8), np.nan, dtype=np.float32)
        A[:with_audio] = np.random.default_rng(seed).standard_normal((with_audio, 8))
        embeddings["audio"] = A
    return Dataset(inter, pd.DataFrame({"item_id": ids}), embeddings=embeddings, embedding_ids=ids, info={"source": "test"})


def _config(tmp_path: Path, ds: Dataset, **kw) -> JobConfig:
    return JobConfig(registry=tmp_path / "registry", work_dir=tmp_path / "work", dataset=ds,
                     codebook=CodebookSettings(codebook_size=16, method="psrq"),
                     model=ModelConfig(emb_dim=16, att_hidden=(16,), mlp_hidden=(32,)),
                     train=TrainConfig(epochs=3, batch_size=256, checkpoint_every=1000), **kw)


@pytest.fixture(scope="module")
def live_pair(tmp_path_factory):
    """A registry whose live ranker learned the listeners' tastes."""
    tmp = tmp_path_factory.mktemp("gate")
    config = _config(tmp, _dataset())
    train_codebooks(config)
    v = train_ranker(config)
    return tmp, config, v


def test_a_ranker_that_learned_passes_and_goes_live(live_pair) -> None:
    tmp, _, v = live_pair
    gate = v.manifest["gate"]
    assert gate["passed"] and gate["candidate_auc"] >= 0.6 and gate["candidate_interval"][0] > 0.52, gate
    assert Registry(tmp / "registry").live("ranker").version == v.version


def test_mcca_learns_when_most_tracks_have_no_audio(tmp_path) -> None:
    """The demo's catalogue shape (audio for 16 of 600 tracks, so 584 without a joint code): MCCA
    queries those by their text codes and passes the gate with AUC >= 0.6 (it scored 0.56 when they
    all shared the joint table's "missing" row)."""
    config = _config(tmp_path, _dataset(with_audio=16))
    train_codebooks(config)
    gate = train_ranker(config).manifest["gate"]
    assert gate["passed"] and gate["candidate_auc"] >= 0.6, gate


def test_shuffled_labels_and_a_worse_ranker_are_refused_and_stay_registered(live_pair, caplog) -> None:
    tmp, config, live = live_pair
    caplog.set_level(logging.WARNING)
    # labels shuffled in the training window only: the held-out window still tells good from bad
    worse = train_ranker(replace(config, dataset=_dataset(shuffle_before=0.8)))
    gate = worse.manifest["gate"]
    reg = Registry(tmp / "registry")
    assert not gate["passed"] and reg.live("ranker").version == live.version, gate
    assert any("not shown above chance" in r for r in gate["reasons"])
    assert any("worse than the live ranker" in r for r in gate["reasons"]) and gate["live_version"] == live.version
    refused = [e for e in reg.events("ranker") if e.get("event") == "refused"]
    assert refused[-1]["version"] == worse.version and "worse than the live ranker" in refused[-1]["reason"]
    assert "refused by the ranker gate" in caplog.text
    # --force-gate promotes it, loudly
    forced = train_ranker(replace(config, dataset=_dataset(shuffle_before=0.8, seed=1), force_gate=True))
    assert reg.live("ranker").version == forced.version and "OVERRIDDEN with --force-gate" in caplog.text
    assert reg.events("ranker")[-1]["gate_overridden"] is True


def test_the_cron_command_exits_0_on_a_refusal_that_status_shows(tmp_path) -> None:
    data = tmp_path / "data"
    write_dataset(data, _dataset(shuffle_before=0.999))  # every label shuffled but the newest few
    env = {**os.environ, "SIDSTREAM_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "sidstream.cli"]
    done = subprocess.run([*cli, "train", "all", "--data", str(data), "--codebook-size", "16", "--epochs", "2", "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ranker = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{") and '"ranker"' in x][0]
    assert ranker["gate"]["passed"] is False
    status = subprocess.run([*cli, "status", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    report = json.loads(status.stdout)
    assert report["ranker"]["live"] is None
    assert report["last_ranker_gate"]["decision"] == "refused" and report["last_ranker_gate"]["version"] == ranker["version"]
