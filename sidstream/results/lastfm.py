"""The Last.fm tables (docs/results/lastfm.md): what runs each needs and how it is rendered.

Headline: DIN, DIN + text SIDs of each quantizer, MCCA, on `SEEDS` seeds. Seed s trains every
model with ranker seed s and (where there is a codebook) codebook seed s, so model A and model
B at seed s share the split, the batch order and the codebook seed; comparisons are paired on s
(``sidstream.results.stats``). The seed-axes table varies one seed with the other fixed, to show
which one the spread comes from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sidstream.results.runs import Run
from sidstream.results.stats import holm, interval, paired, verdict

# what a run's numbers depend on (the key of kept runs), and what the tables depend on
RUN_SOURCES = ("psrq/*.py", "trainer/codes.py", "trainer/dataset.py", "trainer/embeddings.py", "trainer/evaluate.py",
               "trainer/features.py", "trainer/lastfm_convert.py", "trainer/metrics.py", "trainer/synthetic.py",
               "trainer/train_loop.py", "trainer/models/*.py", "sidcore/datasets/*.py", "encoders/text.py",
               "sidstream/results/runs.py")
SOURCES = (*RUN_SOURCES, "sidstream/results/lastfm.py", "sidstream/results/stats.py")

EPOCHS, LR = 3, 1e-3
HEADLINE = ("din", "din+pq", "din+vq", "din+rq", "din+rqvae", "din+psrq", "din+psrq_id", "mcca")
LABELS = {"din": "DIN (IDs only)", "din+pq": "DIN + PQ", "din+vq": "DIN + VQ (one codebook)", "din+rq": "DIN + RQ (RQ-KMeans)",
          "din+rqvae": "DIN + RQ-VAE", "din+psrq": "DIN + PSRQ (alpha = 1)", "din+psrq_id": "DIN + psrq_id (semantic layers)",
          "mcca": "MCCA (PSRQ, text only)"}
# (a, b, what the comparison stands for): a family, Holm-corrected together
HEADLINE_CLAIMS = (
    *((m, "din", "semantic IDs over plain IDs") for m in HEADLINE if m != "din"),
    ("din+psrq", "din+rq", "PSRQ over RQ (the paper's claim)"),
    ("din+psrq", "din+pq", "PSRQ over PQ"),
    ("din+psrq", "din+vq", "PSRQ over VQ"),
    ("din+psrq", "din+rqvae", "PSRQ over RQ-VAE"),
    ("mcca", "din+psrq", "MCCA over DIN + PSRQ"),
    ("din+psrq_id", "din+psrq", "unique-ID mode over PSRQ"),
)


@dataclass(frozen=True)
class Plan:
    seeds: int
    axis_seeds: int
    equal_codes: tuple[str, ...]
    training_grid: tuple[tuple[int, float], ...]
    batches: tuple[int, ...]
    batch_seeds: int


FULL = Plan(seeds=10, axis_seeds=5, equal_codes=("din+vq@k=120", "din+rq@k=5", "din+pq@k=5"),
            training_grid=((1, 1e-4), (1, 1e-3), (3, 1e-3), (6, 1e-3)), batches=(512, 2048, 8192, 16384), batch_seeds=5)
QUICK = Plan(seeds=3, axis_seeds=3, equal_codes=("din+vq@k=16", "din+rq@k=3", "din+pq@k=3"),
             training_grid=((1, 1e-3), (3, 1e-3), (4, 1e-3)), batches=(512, 2048), batch_seeds=3)


def R(model: str, ranker_seed: int, codebook_seed: int, epochs: int = EPOCHS, lr: float = LR, batch: int = 512) -> Run:
    """A run; models without a codebook (plain DIN) ignore the codebook seed, so it is 0."""
    return Run(model, ranker_seed, 0 if model == "din" else codebook_seed, epochs, lr, batch)


def _paired_runs(models: tuple[str, ...], seeds: int) -> list[Run]:
    return [R(m, s, s) for m in models for s in range(seeds)]


def _vec(results: dict[Run, dict[str, Any]], model: str, seeds: int, metric: str = "cold_auc") -> np.ndarray:
    return np.array([results[R(model, s, s)][metric] for s in range(seeds)])


def _ci(v: np.ndarray, digits: int = 4) -> str:
    mean, low, high = interval(v)
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _distinct(results: dict[Run, dict[str, Any]], model: str, seeds: int) -> str:
    counts = [sum(results[R(model, s, s)]["distinct_sids"].values()) for s in range(seeds)]
    if not any(counts):
        return "—"
    lo, hi = min(counts), max(counts)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def compare(results: dict[Run, dict[str, Any]], claims: tuple[tuple[str, str, str], ...], seeds: int) -> tuple[list[str], dict[str, str]]:
    """Rows of a comparison table and the verdicts ({"a_vs_b": better|level|worse}), Holm within the family."""
    stats = [paired(_vec(results, a, seeds), _vec(results, b, seeds)) for a, b, _ in claims]
    adjusted = holm([s["p"] for s in stats])
    rows = ["| claim | A − B, Cold AUC: mean [95 % CI] | A wins / losses | p (paired t) | p (Holm) | p (Wilcoxon) | All AUC: A − B | verdict |",
            "|---|---|---|---|---|---|---|---|"]
    verdicts = {}
    for (a, b, what), st, p_adj in zip(claims, stats, adjusted, strict=True):
        v = verdict(st["mean_diff"], p_adj)
        verdicts[f"{a}_vs_{b}"] = v
        all_d = float(np.mean(_vec(results, a, seeds, "all_auc") - _vec(results, b, seeds, "all_auc")))
        diff = "identical runs (0 every seed)" if st["identical"] else f"{st['mean_diff']:+.4f} [{st['ci_low']:+.4f}, {st['ci_high']:+.4f}]"
        rows.append(f"| {what}: `{a}` vs `{b}` | {diff} | {st['wins']} / {st['losses']} | {st['p']:.2g} | {p_adj:.2g} | "
                    f"{st['p_wilcoxon']:.2g} | {all_d:+.4f} | **{v}** |")
    return rows, verdicts


def _describe(results: dict[Run, dict[str, Any]]) -> str:
    any_run = next(iter(results.values()))
    return (f"{any_run['n_test']:,} test rows, {any_run['n_cold']:,} of them cold (item with < 30 training rows); "
            f"converted data set fingerprint `{any_run['data_fingerprint']}` (trainer.dataset)")


# ----------------------------------------------------------------------------------- headline
def headline_runs(plan: Plan) -> list[Run]:
    return _paired_runs(HEADLINE, plan.seeds)


def headline(results: dict[Run, dict[str, Any]], plan: Plan) -> tuple[str, dict[str, str]]:
    n = plan.seeds
    lines = [f"{_describe(results)}. {n} seeds; seed s = ranker seed s and codebook seed s for every model; "
             f"{EPOCHS} epochs, lr {LR:g}, batch 512. Mean [95 % Student-t interval] over seeds.", "",
             "| model | All AUC | Cold AUC | Logloss | GAUC | distinct text SIDs (over seeds) |", "|---|---|---|---|---|---|"]
    for m in HEADLINE:
        lines.append(f"| {LABELS[m]} | {_ci(_vec(results, m, n, 'all_auc'))} | {_ci(_vec(results, m, n))} | "
                     f"{np.mean(_vec(results, m, n, 'logloss')):.4f} | {np.mean(_vec(results, m, n, 'gauc')):.4f} | {_distinct(results, m, n)} |")
    lines += ["", "Cold AUC per seed (0, 1, ...):", ""]
    lines += [f"- `{m}`: " + " / ".join(f"{v:.3f}".lstrip("0") for v in _vec(results, m, n)) for m in HEADLINE]
    rows, verdicts = compare(results, HEADLINE_CLAIMS, n)
    lines += ["", f"Paired comparisons on Cold AUC (one difference per seed, {n} seeds; Holm over the {len(HEADLINE_CLAIMS)} "
              "claims; verdict at p (Holm) < 0.05):", "", *rows]
    return "\n".join(lines), verdicts


# -------------------------------------------------------------------------------------- alpha
ALPHA = (("din+rq", "0 (= RQ-KMeans)"), ("din+psrq@0.25", "0.25"), ("din+psrq@0.5", "0.5"), ("din+psrq", "1 (the paper)"))
ALPHA_CLAIMS = (("din+psrq@0.25", "din+rq", "alpha 0.25 over 0"), ("din+psrq@0.5", "din+psrq@0.25", "alpha 0.5 over 0.25"),
                ("din+psrq", "din+psrq@0.5", "alpha 1 over 0.5"))


def alpha_runs(plan: Plan) -> list[Run]:
    return _paired_runs(tuple(m for m, _ in ALPHA), plan.seeds)


def alpha(results: dict[Run, dict[str, Any]], plan: Plan) -> tuple[str, dict[str, str]]:
    n = plan.seeds
    lines = [f"DIN + PSRQ text SIDs by prefix weight alpha; {n} paired seeds as in the headline.", "",
             "| alpha | All AUC | Cold AUC | distinct SIDs |", "|---|---|---|---|"]
    for m, label in ALPHA:
        lines.append(f"| {label} | {_ci(_vec(results, m, n, 'all_auc'))} | {_ci(_vec(results, m, n))} | {_distinct(results, m, n)} |")
    rows, verdicts = compare(results, ALPHA_CLAIMS, n)
    return "\n".join([*lines, "", *rows]), verdicts


# -------------------------------------------------------------------------------- equal codes
def equal_codes_runs(plan: Plan) -> list[Run]:
    return _paired_runs((*plan.equal_codes, "din+psrq", "din+rq", "din+vq", "din+pq"), plan.seeds)


def equal_codes(results: dict[Run, dict[str, Any]], plan: Plan) -> tuple[str, dict[str, str]]:
    n = plan.seeds
    vq_k, rq_k, pq_k = plan.equal_codes
    claims = ((vq_k, "din+psrq", "VQ with as many codes as PSRQ's SIDs vs PSRQ"),
              (rq_k, "din+psrq", "RQ with a small K (about as many SIDs) vs PSRQ"),
              (pq_k, "din+psrq", "PQ with a small K vs PSRQ"),
              (rq_k, "din+rq", "RQ: small K over K = 64"),
              (pq_k, "din+pq", "PQ: small K over K = 64"),
              (vq_k, "din+vq", "VQ: more codes over K = 64"))
    lines = ["The explanation to test: the SIDs help cold items through *few, well-populated* codes, whatever the "
             "quantizer. The controlled variable is the number of distinct SIDs, set by K: VQ with one code per PSRQ SID, "
             f"RQ and PQ with K small enough that K^3 is about PSRQ's count. {n} paired seeds.", "",
             "| model | distinct SIDs | Cold AUC | All AUC |", "|---|---|---|---|"]
    for m in ("din+psrq", *plan.equal_codes, "din+rq", "din+pq", "din+vq"):
        lines.append(f"| `{m}` | {_distinct(results, m, n)} | {_ci(_vec(results, m, n))} | {_ci(_vec(results, m, n, 'all_auc'))} |")
    rows, verdicts = compare(results, claims, n)
    return "\n".join([*lines, "", *rows]), verdicts


# --------------------------------------------------------------------------------- seed axes
AXES_MODELS = ("din+psrq", "din+rq")


def seed_axes_runs(plan: Plan) -> list[Run]:
    out = [R(m, 0, s) for m in AXES_MODELS for s in range(plan.axis_seeds)]
    out += [R(m, s, 0) for m in (*AXES_MODELS, "din") for s in range(plan.axis_seeds)]
    return out + _paired_runs((*AXES_MODELS, "din"), plan.seeds)


def seed_axes(results: dict[Run, dict[str, Any]], plan: Plan) -> tuple[str, dict[str, str]]:
    k, n = plan.axis_seeds, plan.seeds
    lines = [f"Std of Cold AUC when one seed moves and the other stays at 0 ({k} values each), and when both move "
             f"together as in the headline ({n} seeds).", "",
             "| model | codebook seed only | ranker seed only | both (headline) |", "|---|---|---|---|"]
    verdicts = {}
    for m in (*AXES_MODELS, "din"):
        ranker = np.array([results[R(m, s, 0)]["cold_auc"] for s in range(k)])
        both = _vec(results, m, n)
        if m == "din":
            cb = "— (no codebook)"
        else:
            codebook = np.array([results[R(m, 0, s)]["cold_auc"] for s in range(k)])
            cb = f"{codebook.std(ddof=1):.4f}"
            verdicts[f"{m}_spread"] = "codebook" if codebook.std(ddof=1) > ranker.std(ddof=1) else "ranker"
        lines.append(f"| `{m}` | {cb} | {ranker.std(ddof=1):.4f} | {both.std(ddof=1):.4f} |")
    lines += ["", "Verdict `<model>_spread`: the axis with the larger std (a description of these runs, not a test)."]
    return "\n".join(lines), verdicts


# ---------------------------------------------------------------------------------- training
TRAINING_MODELS = ("din", "din+psrq", "din+rq", "mcca")


def training_runs(plan: Plan) -> list[Run]:
    if (EPOCHS, LR) not in plan.training_grid:
        raise ValueError(f"the training grid must contain the setting used everywhere ({EPOCHS}, {LR})")
    return [R(m, 0, 0, e, lr) for m in TRAINING_MODELS for e, lr in plan.training_grid]


def training(results: dict[Run, dict[str, Any]], plan: Plan) -> tuple[str, dict[str, str]]:
    lines = ["Epochs and learning rate, seed 0 only (one run per cell: a check of the training set-up, not a comparison "
             "with an interval). All AUC / Cold AUC / test logloss.", "",
             "| epochs, lr | " + " | ".join(f"`{m}`" for m in TRAINING_MODELS) + " |", "|---|" + "---|" * len(TRAINING_MODELS)]
    for e, lr in plan.training_grid:
        cells = []
        for m in TRAINING_MODELS:
            r = results[R(m, 0, 0, e, lr)]
            cells.append(f"{r['all_auc']:.3f} / {r['cold_auc']:.3f} / {r['logloss']:.3f}".replace("0.", "."))
        used = " (used)" if (e, lr) == (EPOCHS, LR) else ""
        lines.append(f"| {e}, {lr:g}{used} | " + " | ".join(cells) + " |")
    verdicts = {}
    for m in TRAINING_MODELS:
        best = max(plan.training_grid, key=lambda g: results[R(m, 0, 0, g[0], g[1])]["cold_auc"])
        verdicts[f"{m}_best"] = f"{best[0]}x{best[1]:g}"
        longest = max(plan.training_grid)
        verdicts[f"{m}_logloss_longest_vs_used"] = ("higher" if results[R(m, 0, 0, *longest)]["logloss"]
                                                    > results[R(m, 0, 0, EPOCHS, LR)]["logloss"] else "not higher")
    lines += ["", "Verdicts (seed 0, descriptive): " + ", ".join(f"`{k}` {v}" for k, v in verdicts.items()) + "."]
    return "\n".join(lines), verdicts


# ------------------------------------------------------------------------------ batch size
BATCH_MODELS = ("din+psrq", "mcca")


def batch_lr(batch: int) -> float:
    """The learning rate that goes with a batch: square-root scaling from 1e-3 at 512."""
    return round(LR * (batch / 512) ** 0.5, 6)


def batch_runs(plan: Plan) -> list[Run]:
    return [R(m, s, s, EPOCHS, batch_lr(b), b) for m in BATCH_MODELS for b in plan.batches for s in range(plan.batch_seeds)]


def _batch_cold(results: dict[Run, dict[str, Any]], plan: Plan, model: str, batch: int) -> np.ndarray:
    return np.array([results[R(model, s, s, EPOCHS, batch_lr(batch), batch)]["cold_auc"] for s in range(plan.batch_seeds)])


def _within_one_std(results: dict[Run, dict[str, Any]], plan: Plan, model: str, batch: int) -> bool:
    """The rule: mean Cold AUC within one std (over seeds) of the first (smallest) batch's."""
    base = _batch_cold(results, plan, model, plan.batches[0])
    return bool(abs(_batch_cold(results, plan, model, batch).mean() - base.mean()) <= base.std(ddof=1))


def largest_batch_within_one_std(results: dict[Run, dict[str, Any]], plan: Plan, model: str) -> int:
    """The largest batch whose mean Cold AUC is within one std (over seeds) of batch 512's."""
    return max(b for b in plan.batches if _within_one_std(results, plan, model, b))


def batch(results: dict[Run, dict[str, Any]], plan: Plan) -> tuple[str, dict[str, str]]:
    k = plan.batch_seeds
    lines = [f"Cold AUC by batch size, lr scaled by sqrt(batch / 512) from 1e-3, {EPOCHS} epochs, {k} paired seeds. "
             "A batch \"keeps quality\" when its mean Cold AUC is within one std (over seeds) of batch 512's: the rule "
             "that picks the trainer's default batch on a GPU (`train.gpu_batch_size`).", "",
             "| batch (lr) | " + " | ".join(f"`{m}` Cold AUC" for m in BATCH_MODELS) + " | " +
             " | ".join(f"`{m}` − batch 512" for m in BATCH_MODELS) + " |", "|---|" + "---|" * (2 * len(BATCH_MODELS))]
    verdicts: dict[str, str] = {}
    for b in plan.batches:
        cells, diffs = [], []
        for m in BATCH_MODELS:
            v, base = _batch_cold(results, plan, m, b), _batch_cold(results, plan, m, plan.batches[0])
            cells.append(_ci(v))
            within = _within_one_std(results, plan, m, b)
            diffs.append(f"{v.mean() - base.mean():+.4f} ({'within' if within else 'outside'} one std, {base.std(ddof=1):.4f})")
            if b != plan.batches[0]:
                verdicts[f"{m}_batch{b}"] = "within" if within else "outside"
        lines.append(f"| {b} ({batch_lr(b):g}) | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    chosen = min(largest_batch_within_one_std(results, plan, m) for m in BATCH_MODELS)
    verdicts["largest_batch_keeping_quality"] = str(chosen)
    lines += ["", f"Largest batch within one std for every model: **{chosen}** (verdict `largest_batch_keeping_quality`)."]
    return "\n".join(lines), verdicts


TABLES: dict[str, tuple[Callable[[Plan], list[Run]], Callable[[dict[Run, dict[str, Any]], Plan], tuple[str, dict[str, str]]], str]] = {
    "lastfm-headline": (headline_runs, headline, "Table 3 style: DIN, DIN + SIDs of each quantizer, MCCA"),
    "lastfm-alpha": (alpha_runs, alpha, "PSRQ's alpha and Cold AUC"),
    "lastfm-equal-codes": (equal_codes_runs, equal_codes, "Equal numbers of distinct codes across quantizers"),
    "lastfm-seed-axes": (seed_axes_runs, seed_axes, "Where the spread comes from: codebook seed vs ranker seed"),
    "lastfm-training": (training_runs, training, "Training choices"),
    "lastfm-batch": (batch_runs, batch, "Batch size and Cold AUC (the GPU default)"),
}


def plot_headline(results: dict[Run, dict[str, Any]], plan: Plan, path: Any) -> None:
    """Cold and All AUC per headline model: mean with its 95 % interval, and every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(HEADLINE))
    for offset, metric, label in ((-0.15, "all_auc", "All AUC"), (0.15, "cold_auc", "Cold AUC")):
        stats = [interval(_vec(results, m, plan.seeds, metric)) for m in HEADLINE]
        means = np.array([s[0] for s in stats])
        err = np.array([[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]])
        ax.errorbar(x + offset, means, yerr=err, fmt="o", capsize=4, label=f"{label} (mean, 95 % CI)")
        for i, m in enumerate(HEADLINE):
            ax.scatter(np.full(plan.seeds, x[i] + offset + 0.06), _vec(results, m, plan.seeds, metric), s=6, alpha=0.5, color="grey")
    ax.set_xticks(x, list(HEADLINE), rotation=25, ha="right")
    ax.set_ylabel("AUC")
    ax.set_title(f"Last.fm-2k, {plan.seeds} paired seeds (grey: one seed)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
