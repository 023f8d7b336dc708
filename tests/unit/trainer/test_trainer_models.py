import numpy as np
import pandas as pd
import pytest
import torch

from sidcore.config import CodebookSettings
from trainer.dataset import load_dataset, write_dataset
from trainer.evaluate import evaluate, parse_spec, prepare
from trainer.features import IdVocab, build_samples, time_split
from trainer.models import ModelConfig, build_model
from trainer.models.mcca import mcca_roles
from trainer.synthetic import make_synthetic
from trainer.train_loop import TrainConfig

pytestmark = pytest.mark.unit

SMALL = ModelConfig(emb_dim=16, att_hidden=(16,), mlp_hidden=(32, 16))


def _batch(b=4, t=5, codebooks=("text",), L=2, K=8, rows=20):
    g = torch.Generator().manual_seed(0)
    out = {
        "item": torch.randint(1, rows, (b,), generator=g),
        "hist_item": torch.randint(1, rows, (b, t), generator=g),
        "hist_mask": torch.rand(b, t, generator=g) > 0.3,
        "label": torch.ones(b),
    }
    for m in codebooks:
        out[f"codes:{m}"] = torch.randint(-1, K, (b, L), generator=g)
        out[f"hist_codes:{m}"] = torch.randint(-1, K, (b, t, L), generator=g)
    return out


@pytest.mark.parametrize("activation", ["dice", "prelu"])
@pytest.mark.parametrize(
    "config", [ModelConfig(kind="din"), ModelConfig(kind="din", sid_codebook="text"), ModelConfig(kind="mcca"),
               ModelConfig(kind="mcca", use_specific=False), ModelConfig(kind="mcca", use_joint=False)]
)
def test_models_give_finite_logits_for_any_modality_set(config, activation):
    from dataclasses import replace

    for codebooks in (("text",), ("text", "audio", "joint"), ("audio",)):
        if config.sid_codebook and config.sid_codebook not in codebooks:
            continue
        model = build_model(replace(config, activation=activation, emb_dim=8), 20, {m: [8, 8] for m in codebooks})
        logits = model(_batch(codebooks=codebooks))
        assert logits.shape == (4,) and torch.isfinite(logits).all()


def test_masked_history_does_not_change_the_output():
    model = build_model(ModelConfig(kind="mcca", emb_dim=8), 20, {"text": [8, 8]}).eval()
    batch = _batch()
    other = {k: v.clone() for k, v in batch.items()}
    other["hist_item"][~batch["hist_mask"]] = 3  # change only the padded positions
    other["hist_codes:text"][~batch["hist_mask"]] = 5
    assert torch.allclose(model(batch), model(other))


def test_mcca_roles_follow_the_available_codebooks():
    full = ModelConfig(kind="mcca")
    assert mcca_roles(full, ["text", "audio", "joint"]) == (["text", "audio", "joint"], "joint")
    assert mcca_roles(ModelConfig(use_specific=False), ["text", "audio", "joint"]) == (["joint"], "joint")
    assert mcca_roles(ModelConfig(use_joint=False), ["text", "audio", "joint"]) == (["text", "audio"], None)
    # one modality: it plays the joint role too
    assert mcca_roles(full, ["text"]) == (["text"], "text")
    with pytest.raises(ValueError):
        mcca_roles(full, [])


def test_mcca_queries_a_track_without_a_joint_code_by_its_text_code():
    """A target with no joint code (one modality missing) is scored by its text code: two such
    targets that differ only in their text SID get different logits, equal to those of a model whose
    query is the text embedding; targets with a joint code are untouched by the rule."""
    model = build_model(ModelConfig(kind="mcca", emb_dim=8), 20, {m: [8, 8] for m in ("text", "audio", "joint")}).eval()
    batch = _batch(b=2, codebooks=("text", "audio", "joint"))
    for k, v in batch.items():  # the same user, target ID and audio; only the text code differs
        batch[k] = v[:1].expand(2, *v.shape[1:]).clone()
    batch["codes:joint"][:] = -1
    batch["codes:audio"][:] = -1
    batch["codes:text"] = torch.tensor([[1, 2], [3, 4]])
    logits = model(batch)
    assert not torch.isclose(logits[0], logits[1])
    query = model._query(batch, {m: model.sid_emb[m](batch[f"codes:{m}"]) for m in model.attended})
    assert torch.equal(query, model.sid_emb["text"](batch["codes:text"]))
    with_joint = dict(batch, **{"codes:joint": torch.tensor([[5, 6], [5, 6]])})
    query = model._query(with_joint, {m: model.sid_emb[m](with_joint[f"codes:{m}"]) for m in model.attended})
    assert torch.equal(query, model.sid_emb["joint"](with_joint["codes:joint"]))


def test_history_is_last_positives_strictly_before():
    df = pd.DataFrame({"user_id": ["a"] * 5 + ["b"], "item_id": ["x", "y", "z", "w", "x", "y"],
                       "timestamp": [1, 2, 2, 3, 3, 1], "label": [1, 1, 0, 1, 0, 1]})
    s = build_samples(df, ["x", "y", "z", "w"], history_len=2)
    assert s.history.tolist() == [[-1, -1], [-1, 0], [-1, 0], [0, 1], [0, 1], [-1, -1]]


def test_unseen_ids_get_hashed_rows_within_the_table():
    vocab = IdVocab(["a", "b"], oov_buckets=4)
    rows = vocab.rows(["a", "b", "new1", "new1", "new2"])
    assert rows[:2].tolist() == [1, 2] and rows[2] == rows[3]
    assert (rows[2:] >= 3).all() and (rows < vocab.n_rows).all()


def test_time_split_is_by_time():
    ds = make_synthetic(n_users=20, n_items=60, events_per_user=10)
    s = build_samples(ds.interactions, ds.embedding_ids)
    train, test, cutoff = time_split(s, 0.25)
    assert s.timestamps[train].max() <= cutoff < s.timestamps[test].min()


def test_mcca_learns_planted_content_signal_that_plain_ids_cannot(tmp_path):
    """Cold items (no training rows) whose label depends on their content group only."""
    torch.set_num_threads(1)
    ds = make_synthetic(n_users=200, n_items=400, events_per_user=30, modalities=("text", "audio"), seed=1)
    write_dataset(tmp_path / "syn", ds)  # the contract round-trips
    prep = prepare(load_dataset(tmp_path / "syn"), test_fraction=0.25)
    assert prep.describe()["cold_test_rows"] > 500
    res = {r["model"]: r for r in evaluate(prep, ["din", "mcca"], 1, SMALL, CodebookSettings(codebook_size=8, layers=2),
                                           TrainConfig(epochs=2, lr=3e-3, batch_size=256), None)}
    din, mcca = res["din"]["cold_auc"], res["mcca"]["cold_auc"]
    assert mcca > 0.8, res
    assert mcca > din + 0.15, (din, mcca)
    assert np.isfinite(res["mcca"]["logloss"])


def test_parse_spec_names():
    spec = parse_spec("din+rq@0.5", SMALL, CodebookSettings(), ["text"])
    assert spec.model.kind == "din" and spec.model.sid_codebook == "text"
    assert spec.codebook.method == "rq" and spec.codebook.alpha == 0.5
    assert parse_spec("din", SMALL, CodebookSettings(), ["text"]).codebook is None
    assert parse_spec("mcca-no-mjc", SMALL, CodebookSettings(), ["text"]).model.use_joint is False
    with pytest.raises(ValueError):
        parse_spec("xgboost", SMALL, CodebookSettings(), ["text"])
