"""The serving rule for warm children (docs/architecture.md, "A warm child with its parent's ranker"):
the live ranker reads a new codebook version's SIDs only after the ranker gate let it serve that
version, which must be a warm refit of the version the ranker was trained on."""

from __future__ import annotations

import pytest

from sidcore.config import CodebookSettings, Settings
from sidcore.registry import Registry
from trainer.dataset import write_dataset
from trainer.jobs import JobConfig, judge_warm_child, train_codebooks, train_ranker
from trainer.models import ModelConfig
from trainer.ranker_gate import WARM_CHILD, RankerGateConfig, serving_codebooks
from trainer.serving import ServingState
from trainer.synthetic import make_synthetic
from trainer.train_loop import TrainConfig

pytestmark = pytest.mark.unit


def _event(ranker: str, version: str, passed: bool) -> dict:
    return {"event": WARM_CHILD, "ranker": ranker, "codebook_version": version, "passed": passed}


def test_serving_codebooks_follows_the_last_decision_for_the_live_pair():
    assert serving_codebooks([], "r1", "v1", "v2") == "v1"  # no decision: the version it was trained on
    assert serving_codebooks([_event("r1", "v2", True)], "r1", "v1", "v2") == "v2"
    assert serving_codebooks([_event("r1", "v2", True), _event("r1", "v2", False)], "r1", "v1", "v2") == "v1"
    assert serving_codebooks([_event("r0", "v2", True)], "r1", "v1", "v2") == "v1"  # another ranker's decision
    assert serving_codebooks([_event("r1", "v2", True)], "r1", "v1", "v3") == "v1"  # another child
    assert serving_codebooks([_event("r1", "v2", True)], "r1", "v1", "v1") == "v1"


@pytest.fixture
def syn_dir(tmp_path):
    write_dataset(tmp_path / "data", make_synthetic(n_users=80, n_items=160, events_per_user=25, modalities=("text",), seed=3))
    return tmp_path / "data"


def test_the_live_ranker_serves_a_warm_child_only_when_the_gate_lets_it(tmp_path, syn_dir):
    home = tmp_path / "home"
    config = JobConfig(registry=home / "registry", work_dir=tmp_path / "work", data=syn_dir, force=True,
                       codebook=CodebookSettings(codebook_size=8, layers=2),
                       model=ModelConfig(kind="din", sid_codebook="text", emb_dim=8, att_hidden=(8,), mlp_hidden=(16,)),
                       train=TrainConfig(epochs=2, batch_size=64, checkpoint_every=0),
                       ranker_gate=RankerGateConfig(min_auc_lift=0.0, rounds=200), force_gate=True)
    v1 = train_codebooks(config)
    ranker = train_ranker(config)
    v2 = train_codebooks(config)
    assert v2.manifest["metrics"]["text"]["refit"]["taken"] == "warm"
    serving = ServingState(Settings(home=home))
    assert serving.snapshot.live_codebooks == v2.version and serving.snapshot.ranker_codebooks == v1.version
    result = judge_warm_child(config, v2)
    assert result is not None
    event = Registry(home / "registry").events("ranker")[-1]
    assert event["event"] == WARM_CHILD and event["ranker"] == ranker.version and event["passed"] == result.passed
    assert serving.refresh()
    assert serving.snapshot.ranker_codebooks == (v2.version if result.passed else v1.version)
    # a refused decision after it sends the ranker back to its own version's SIDs
    Registry(home / "registry").log_event("ranker", _event(ranker.version, v2.version, False))
    serving.refresh()
    assert serving.snapshot.ranker_codebooks == v1.version


def test_a_fresh_child_is_never_served_by_the_parents_ranker(tmp_path, syn_dir):
    home = tmp_path / "home"
    config = JobConfig(registry=home / "registry", work_dir=tmp_path / "work", data=syn_dir, force=True,
                       codebook=CodebookSettings(codebook_size=8, layers=2, refit="fresh"),
                       model=ModelConfig(kind="din", sid_codebook="text", emb_dim=8, att_hidden=(8,), mlp_hidden=(16,)),
                       train=TrainConfig(epochs=1, batch_size=64, checkpoint_every=0), force_gate=True)
    train_codebooks(config)
    train_ranker(config)
    v2 = train_codebooks(config)
    assert judge_warm_child(config, v2) is None
    event = Registry(home / "registry").events("ranker")[-1]
    assert event["event"] == WARM_CHILD and event["passed"] is False and "not a warm child" in event["reason"]
