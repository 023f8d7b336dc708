"""The offline evaluation of the paper's protocol: DIN, DIN + one codebook's SIDs, MCCA.

Every model is trained on the time split's training rows and scored on its test rows, for
several seeds (the seed drives the codebook fit, the initialisation and the batch order);
results are mean ± std of All AUC, Cold AUC, Logloss and GAUC.

Model names: ``din``; ``din+<method>`` (method in psrq, rq, vq, pq, rqvae; SIDs of the text
codebook, or the first modality there is); ``din-sum+<method>`` (DIN over IDs ⊕ the *sum* of
every codebook's SID embedding: text, audio and joint, no cross attention); ``mcca`` (PSRQ
codebooks), ``mcca+<method>``, and MCCA's ablations ``mcca-no-msc`` (joint codebook only),
``mcca-no-mjc`` (no joint codebook), ``mcca-no-audio`` / ``mcca-no-text`` (without that
modality's specific codebook; the joint one stays the query). Options after ``@``,
comma-separated: a bare number sets PSRQ's prefix weight (``din+psrq@0.5``), ``k=<K>`` the
codebook size per layer, ``layers=<L>`` the layer count (``din+vq@k=120``, ``din+rq@k=5``) and,
for ``din+``, ``m=<modality>`` the codebook whose SIDs DIN sees (``din+psrq@m=joint``).

Two seeds drive a run: the codebook seed (the k-means fits) and the ranker seed (initialisation
and batch order). ``run_one`` takes both, so the two sources of variance can be varied apart.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sidcore.config import CodebookSettings
from trainer.codes import cached_codes, with_joint
from trainer.dataset import Dataset
from trainer.embeddings import TextEncoding, item_embeddings
from trainer.features import HISTORY_LEN, IdVocab, Lookup, Samples, build_samples, time_split
from trainer.metrics import COLD_THRESHOLD, cold_mask, ranking_metrics
from trainer.models import ModelConfig, build_model
from trainer.train_loop import TrainConfig, predict, train_model

log = logging.getLogger(__name__)

METRICS = ("all_auc", "cold_auc", "logloss", "gauc")
QUICK_MODEL = dict(emb_dim=16, att_hidden=(16,), mlp_hidden=(32, 16))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model: ModelConfig
    codebook: CodebookSettings | None  # None: IDs only
    codebooks: tuple[str, ...] | None = None  # which modalities' codebooks to fit (None: the model's default)


def parse_spec(name: str, model_base: ModelConfig, codebook_base: CodebookSettings, modalities: list[str]) -> ModelSpec:
    """A model name (see the module docstring) -> what to build and which codebooks it needs."""
    base, _, options = name.partition("@")
    head, _, method = base.partition("+")
    update: dict[str, Any] = {"method": method or codebook_base.method}
    on: str | None = None
    for option in filter(None, (o.strip() for o in options.split(","))):
        key, eq, value = option.partition("=")
        try:
            if not eq:
                update["alpha"] = float(key)
            elif key in ("k", "layers"):
                update["codebook_size" if key == "k" else "layers"] = int(value)
            elif key == "m" and head == "din":
                if value not in modalities:
                    raise ValueError(f"no {value!r} modality (have {', '.join(modalities)})")
                on = value
            else:
                raise ValueError(f"unknown option {key!r}")
        except ValueError as exc:
            raise ValueError(f"model {name!r}: bad option {option!r} ({exc}); expected <alpha>, k=<K>, layers=<L> "
                             "or (din+) m=<modality>") from exc
    cb = CodebookSettings.model_validate({**codebook_base.model_dump(), **update})
    if head == "din":
        if not method:
            return ModelSpec(name, replace(model_base, kind="din", sid_codebook=None), None)
        sid = on or ("text" if "text" in modalities else modalities[0])
        return ModelSpec(name, replace(model_base, kind="din", sid_codebook=sid), cb, (sid,))
    if head == "din-sum" and method:
        return ModelSpec(name, replace(model_base, kind="din-sum", sid_codebook=None), cb)
    ablations = {"mcca": (True, True), "mcca-no-msc": (False, True), "mcca-no-mjc": (True, False),
                 "mcca-no-audio": (True, True), "mcca-no-text": (True, True)}
    if head in ablations:
        specific, joint = ablations[head]
        dropped = {"mcca-no-audio": "audio", "mcca-no-text": "text", "mcca-no-mjc": "joint"}.get(head)
        keep = tuple(m for m in modalities if m != dropped) if dropped else None
        return ModelSpec(name, replace(model_base, kind="mcca", use_specific=specific, use_joint=joint), cb, keep)
    raise ValueError(f"unknown model {name!r}; expected din, din+<method>, din-sum+<method>, mcca, mcca-no-msc, "
                     "mcca-no-mjc, mcca-no-audio, mcca-no-text")


@dataclass
class Prepared:
    """A data set made ready once for every model: rows, split, ID vocabulary, embeddings."""

    samples: Samples
    train: Samples
    test: Samples
    catalog: np.ndarray
    vocab: IdVocab
    embeddings: dict[str, np.ndarray]
    cutoff_ms: int
    fingerprint: str

    @property
    def modalities(self) -> list[str]:
        return sorted(self.embeddings)

    def describe(self) -> dict[str, Any]:
        cold = int(cold_mask(self.catalog[self.test.items], self.catalog[self.train.items], COLD_THRESHOLD).sum())
        return {"train_rows": len(self.train), "test_rows": len(self.test), "cold_test_rows": cold,
                "cutoff_ms": self.cutoff_ms, "modalities": self.modalities, "data_fingerprint": self.fingerprint,
                "items": int(len(self.catalog)), "id_vocab": len(self.vocab.item_ids)}


def prepare(
    ds: Dataset, test_fraction: float = 0.2, history_len: int = HISTORY_LEN, max_rows: int | None = None,
    text: TextEncoding | None = None,
) -> Prepared:
    """Histories, the time split, the training ID vocabulary and the aligned item embeddings
    (`text`: how to embed item texts the data set has no text embeddings for; None: it must
    have them -- trainer.embeddings.item_embeddings)."""
    inter = ds.interactions.sort_values("timestamp", kind="stable")
    if max_rows is not None and len(inter) > max_rows:
        inter = inter.iloc[:max_rows]  # the earliest rows: a smaller data set with the same time order
    catalog = sorted(set(ds.items["item_id"]) | set(inter["item_id"]) | set(ds.embedding_ids))
    samples = build_samples(inter, catalog, history_len)
    train_rows, test_rows, cutoff = time_split(samples, test_fraction)
    train, test = samples.take(train_rows), samples.take(test_rows)
    cat = np.asarray(catalog)
    vocab = IdVocab(sorted(set(cat[train.items].tolist())))
    emb = with_joint(item_embeddings(ds, catalog, text=text))
    return Prepared(samples, train, test, cat, vocab, emb, cutoff, ds.fingerprint())


def run_one(
    prep: Prepared, spec: ModelSpec, seed: int, train_config: TrainConfig, cache_dir: Path | None,
    on_step: Callable[[int, int, float], None] | None = None, codebook_seed: int | None = None,
) -> dict[str, Any]:
    """Train one model: `seed` drives the ranker (initialisation, batch order), `codebook_seed`
    the codebook fit (default: `seed`, both move together); returns test metrics and stats."""
    codebook_seed = seed if codebook_seed is None else codebook_seed
    codes: dict[str, np.ndarray] = {}
    sizes: dict[str, list[int]] = {}
    if spec.codebook is not None:
        wanted = prep.embeddings
        if spec.codebooks is not None:
            wanted = {m: prep.embeddings[m] for m in spec.codebooks}
        codes, sizes = cached_codes(wanted, spec.codebook.model_copy(update={"seed": codebook_seed}), cache_dir)
    lookup = Lookup(prep.vocab.rows(prep.catalog.tolist()), codes)
    import torch

    torch.manual_seed(seed)
    model = build_model(spec.model, prep.vocab.n_rows, sizes)
    stats = train_model(model, prep.train, lookup, replace(train_config, seed=seed, checkpoint_every=0), on_step=on_step)
    probs = predict(model, prep.test, lookup, device=train_config.device, data_path=train_config.data_path)
    metrics = ranking_metrics(prep.test.users, prep.catalog[prep.test.items], prep.test.labels, probs,
                              prep.catalog[prep.train.items], COLD_THRESHOLD)
    return {**metrics, "seed": seed, "codebook_seed": codebook_seed if spec.codebook is not None else None,
            "codebook_sizes": sizes, "train_seconds": stats["seconds"], "train_samples_per_s": stats["samples_per_s"],
            "distinct_sids": {m: int(len(np.unique(c[c[:, 0] >= 0], axis=0))) for m, c in codes.items()},
            "codes_digest": codes_digest(codes)}


def codes_digest(codes: dict[str, np.ndarray]) -> str | None:
    """A short hash of the SID features a ranker saw (None for IDs only): two runs with the same
    digest, model and ranker seed train the same network on the same inputs."""
    if not codes:
        return None
    h = hashlib.sha256()
    for modality in sorted(codes):
        h.update(modality.encode())
        h.update(np.ascontiguousarray(codes[modality], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's result: mean and sample std (ddof 1) of every metric over seeds."""
    out: dict[str, Any] = {"model": name, "seeds": len(runs)}
    for key in (*METRICS, "train_samples_per_s"):
        vals = np.array([r[key] for r in runs], dtype=np.float64)
        out[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        out[f"{key}_std"] = float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else 0.0
    out["n_test"], out["n_cold"] = runs[0]["n_test"], runs[0]["n_cold"]
    out["distinct_sids"] = runs[0]["distinct_sids"]
    out["per_seed"] = [{k: r[k] for k in (*METRICS, "seed")} for r in runs]
    return out


def evaluate(
    prep: Prepared, names: list[str], seeds: int, model_base: ModelConfig, codebook_base: CodebookSettings,
    train_config: TrainConfig, cache_dir: Path | None, emit: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[dict[str, Any]]:
    """Every model over seeds 0..seeds-1; `emit` receives each model's summary as it finishes."""
    results = []
    for name in names:
        spec = parse_spec(name, model_base, codebook_base, prep.modalities)
        started = time.perf_counter()
        runs = [run_one(prep, spec, seed, train_config, cache_dir, on_step) for seed in range(seeds)]
        summary = summarise(name, runs)
        summary["seconds"] = time.perf_counter() - started
        if spec.codebook is not None:
            summary["codebook"] = {"method": spec.codebook.method, "alpha": spec.codebook.alpha,
                                   "sizes": runs[0]["codebook_sizes"]}  # as fitted (K capped by the fit rule)
        log.info("%s: all AUC %.4f ± %.4f, cold AUC %.4f ± %.4f", name, summary["all_auc"], summary["all_auc_std"],
                 summary["cold_auc"], summary["cold_auc_std"])
        results.append(summary)
        if emit is not None:
            emit(summary)
    return results


def results_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: model, then mean ± std of each metric."""
    lines = ["| model | All AUC | Cold AUC | Logloss | GAUC | distinct SIDs |", "|---|---|---|---|---|---|"]
    for r in results:
        cells = [f"{r[m]:.4f} ± {r[m + '_std']:.4f}" for m in METRICS]
        sids = ", ".join(f"{m} {n}" for m, n in sorted(r.get("distinct_sids", {}).items())) or "—"
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {sids} |")
    return "\n".join(lines)


def plot_results(results: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Bar chart of All AUC and Cold AUC per model with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in results]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    for offset, key, label in ((-0.2, "all_auc", "All AUC"), (0.2, "cold_auc", "Cold AUC")):
        ax.bar(x + offset, [r[key] for r in results], 0.4, yerr=[r[key + "_std"] for r in results], label=label, capsize=3)
    lo = min(min(r["all_auc"], r["cold_auc"]) for r in results)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(max(r["all_auc"], r["cold_auc"]) for r in results) + 0.03))
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("AUC (mean ± std over seeds)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
