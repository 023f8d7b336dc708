"""The live ranker on a warm child's IDs (`sidstream bench refit`, psrq_id on Last.fm; the `refit`
results table): does a ranker trained on the parent version's SIDs still rank as well when it is
fed the child version's SIDs without retraining, compared with the same ranker retrained on them?

Per seed s, on the Last.fm-2k evaluation data (trainer.evaluate.prepare: the time split, the
catalogue's text embeddings): the parent codebook (seed s) is fitted on a random (1 - grow) share of
the catalogue, the child is its warm refit on all of it (psrq.fitting.warm_child, the job's
default path), both encode the whole catalogue (a parent encodes every embedding). DIN + the
semantic layers as SID features (the headline's `din+psrq_id`), ranker seed s:

- live_on_old: trained and tested on the parent's SIDs (what is served before the refit);
- live_on_new: the same trained network tested on the child's SIDs (the parent's ranker serving
  the child version);
- retrained:   trained and tested on the child's SIDs (the ranker a retrain would give);
- live_on_fresh: the live network tested on a fresh fit's SIDs aligned to the parent (today's
  refit), for comparison.

The paired difference live_on_new - retrained in Cold AUC (same seed, same split) is what the
serving rule (docs/architecture.md, "A warm child with its parent's ranker") bounds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np


def lastfm_prepared(folder: Any) -> tuple[Any, np.ndarray]:
    """(trainer.evaluate.Prepared of Last.fm-2k, its catalogue's text embeddings, L2-normalised)."""
    from sidcore.config import get_settings
    from trainer.embeddings import TextEncoding
    from trainer.evaluate import prepare
    from trainer.lastfm_convert import convert_lastfm, embed_items

    prep = prepare(embed_items(convert_lastfm(folder), TextEncoding.from_settings(get_settings())))
    X = prep.embeddings["text"]
    return prep, np.ascontiguousarray(X / np.linalg.norm(X, axis=1, keepdims=True), dtype=np.float32)


def _semantic(q: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(q.semantic_encode(X))[:, : q.semantic_layers].astype(np.int64)


def ranker_pair(prep: Any, X: np.ndarray, old: np.ndarray, spec: Any, seed: int, epochs: int) -> dict[str, Any]:
    """Cold / all AUC of live_on_old, live_on_new and retrained for one seed (see the module doc)."""
    import torch

    from psrq.fitting import fit_codebook, fresh_aligned, warm_child
    from trainer.evaluate import parse_spec
    from trainer.features import Lookup
    from trainer.metrics import COLD_THRESHOLD, ranking_metrics
    from trainer.models import ModelConfig, build_model
    from trainer.train_loop import TrainConfig, predict, train_model

    parent = fit_codebook(X[old], spec)
    child = warm_child(X, spec, parent)
    codes = {"old": _semantic(parent, X), "new": _semantic(child, X), "fresh": _semantic(fresh_aligned(X, spec, parent), X)}
    model_spec = parse_spec("din+psrq_id", ModelConfig(), spec, prep.modalities)
    train = TrainConfig(epochs=max(1, epochs), seed=seed, checkpoint_every=0)
    rows = prep.vocab.rows(prep.catalog.tolist())

    def lookup(which: str) -> Any:
        return Lookup(rows, {"text": codes[which]})

    def fitted(which: str) -> Any:
        torch.manual_seed(seed)
        model = build_model(model_spec.model, prep.vocab.n_rows, {"text": child.semantic_sizes})
        train_model(model, prep.train, lookup(which), replace(train, seed=seed))
        return model

    def scored(model: Any, which: str) -> dict[str, float]:
        probs = predict(model, prep.test, lookup(which))
        m = ranking_metrics(prep.test.users, prep.catalog[prep.test.items], prep.test.labels, probs,
                            prep.catalog[prep.train.items], COLD_THRESHOLD)
        return {"cold_auc": float(m["cold_auc"]), "all_auc": float(m["all_auc"])}

    live = fitted("old")
    out = {"live_on_old": scored(live, "old"), "live_on_new": scored(live, "new"), "retrained": scored(fitted("new"), "new"),
           "live_on_fresh": scored(live, "fresh")}
    out["kept_path"] = float((codes["old"][old] == codes["new"][old]).all(axis=1).mean())
    return out


def auc_runs(folder: Any, k: int, layers: int, grow: float, seeds: int, epochs: int, spec_base: Any) -> list[dict[str, Any]]:
    """`ranker_pair` for seeds 0..seeds-1 (psrq_id, K, L)."""
    prep, X = lastfm_prepared(folder)
    n_old = int(round((1.0 - grow) * len(X)))
    out = []
    for seed in range(seeds):
        old = np.sort(np.random.default_rng(seed).permutation(len(X))[:n_old])
        spec = spec_base.model_copy(update={"method": "psrq_id", "codebook_size": k, "layers": layers, "seed": seed})
        out.append({"seed": seed, **ranker_pair(prep, X, old, spec, seed, epochs)})
    return out


def auc_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of Cold AUC over seeds, and the paired live_on_new - retrained difference."""
    from sidstream.results.stats import paired

    def cold(kind: str) -> np.ndarray:
        return np.array([r[kind]["cold_auc"] for r in runs], dtype=np.float64)

    diff = paired(cold("live_on_new"), cold("retrained"))
    return {"auc_live_on_old": round(float(np.median(cold("live_on_old"))), 4),
            "auc_live_on_new": round(float(np.median(cold("live_on_new"))), 4),
            "auc_retrained": round(float(np.median(cold("retrained"))), 4),
            "auc_live_on_fresh": round(float(np.median(cold("live_on_fresh"))), 4),
            "live_on_new_minus_retrained": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in diff.items()}}
