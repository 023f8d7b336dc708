"""The quantizer study (docs/results/quantizers.md): every quantizer on the same embeddings.

PSRQ (alpha sweep and prefix-scaling variants), RQ-KMeans, VQ, PQ and RQ-VAE per layer
(utilisation, entropy, reconstruction cosine, purity against a label, distinct SIDs) and the
churn of a refit with another seed, without and with alignment. On Last.fm-2k the items are the
12,133 tagged artists through the shipped MiniLM and the label is the artist's top tag; with
``--quick`` they are planted Gaussian groups (label = group), K = 8.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from psrq.align import align_to_parent, churn_report
from psrq.fitting import fit_codebook
from psrq.health import health_report
from sidcore.config import CodebookSettings

SOURCES = ("psrq/*.py", "sidstream/results/quantizers.py", "trainer/lastfm_convert.py", "trainer/embeddings.py",
           "sidcore/datasets/*.py")

VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("RQ-KMeans", "rq", {}),
    ("PSRQ alpha=1 (paper)", "psrq", {"alpha": 1.0}),
    ("PSRQ alpha=0.5", "psrq", {"alpha": 0.5}),
    ("PSRQ alpha=0.25", "psrq", {"alpha": 0.25}),
    ("PSRQ alpha=0", "psrq", {"alpha": 0.0}),
    ("PSRQ residual_norm", "psrq", {"alpha": 1.0, "prefix_scale": "residual_norm"}),
    ("PSRQ residual_spread", "psrq", {"alpha": 1.0, "prefix_scale": "residual_spread"}),
    ("PSRQ anchor=input alpha=0.5", "psrq", {"alpha": 0.5, "anchor": "input"}),
    ("PSRQ anchor=input alpha=1", "psrq", {"alpha": 1.0, "anchor": "input"}),
    ("PSRQ anchor=input alpha=2", "psrq", {"alpha": 2.0, "anchor": "input"}),
    ("VQ (K=64, 1 layer)", "vq", {}),
    ("PQ (3 sub-spaces)", "pq", {}),
    ("RQ-VAE", "rqvae", {}),
]



def _fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.3f}".lstrip("0") if v < 1 else f"{v:.2f}" for v in values)


def _spec(method: str, k: int, layers: int, seed: int, opts: dict[str, Any]) -> CodebookSettings:
    return CodebookSettings(method=method, codebook_size=k, layers=layers, seed=seed, **opts)


def synthetic_items(n: int = 2000, groups: int = 16, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Planted groups for --quick: unit-norm rows around `groups` centres, label = group."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    X = rng.normal(size=(groups, dim)).astype(np.float32)[g] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), [f"group{i}" for i in g]


def run(X: np.ndarray, labels: list[str], img: Path, k: int, layers: int) -> dict[str, Any]:
    results: dict[str, Any] = {"items": int(len(X)), "dim": int(X.shape[1]), "K": k, "layers": layers, "runs": {}}
    reports: dict[str, dict[str, Any]] = {}
    codes_by: dict[str, np.ndarray] = {}
    fitted: dict[str, Any] = {}
    for name, method, opts in VARIANTS:
        t0 = time.perf_counter()
        q = fit_codebook(X, _spec(method, k, layers, 0, opts))
        fit_s = time.perf_counter() - t0
        codes = q.encode(X)
        rep = health_report(q, X, labels=labels, codes=codes)
        rep["fit_s"] = round(fit_s, 2)
        rep["prefix_weights"] = getattr(q, "prefix_weights", None)
        reports[name], codes_by[name], fitted[name] = rep, codes, q
    results["runs"] = reports
    churn: dict[str, Any] = {}
    for name in ("RQ-KMeans", "PSRQ alpha=1 (paper)", "PSRQ alpha=0.5", "PSRQ anchor=input alpha=1"):
        method, opts = next((m, o) for n, m, o in VARIANTS if n == name)
        child = fit_codebook(X, _spec(method, k, layers, 1, opts))
        churn[name] = churn_report(fitted[name], child, align_to_parent(child, fitted[name], X), X)
    results["churn_refit_seed1"] = churn
    _plots(reports, codes_by, img, k)
    return results


def _plots(reports: dict[str, dict[str, Any]], codes_by: dict[str, np.ndarray], img: Path, k: int) -> None:
    from psrq.plots import plot_code_frequency, plot_layer_metric, plot_side_by_side

    img.mkdir(parents=True, exist_ok=True)
    main = {n: reports[n] for n in ("RQ-KMeans", "PSRQ alpha=1 (paper)", "PSRQ alpha=0.5", "PSRQ anchor=input alpha=1", "PQ (3 sub-spaces)", "RQ-VAE")}
    plot_side_by_side(main, img / "quantizers_side_by_side.png")
    sweep = {n: r for n, r in reports.items() if n.startswith("PSRQ")}
    plot_layer_metric(sweep, "purity", img / "quantizers_purity_alpha_sweep.png", "PSRQ variants: tag purity per layer")
    plot_layer_metric(sweep, "entropy_ratio", img / "quantizers_entropy_alpha_sweep.png", "PSRQ variants: entropy / log K per layer")
    for name, tag in (("RQ-KMeans", "rq"), ("PSRQ alpha=1 (paper)", "psrq_alpha1"), ("PSRQ anchor=input alpha=1", "psrq_input_anchor")):
        plot_code_frequency(codes_by[name], (k,) * codes_by[name].shape[1], img / f"quantizers_code_frequency_{tag}.png", f"{name}: code frequency")



def markdown(results: dict[str, Any], data_line: str) -> str:
    runs = results["runs"]
    lines = [
        f"{data_line} K = {results['K']} per layer, {results['layers']} layers, seed 0; {results['items']:,} items, dim {results['dim']}.",
        "Purity is per-layer code purity (the code at layer l alone, as in method.md's table). Fit times are",
        "wall clock on the machine above, a side figure (`sidstream bench quantize` measures speed).",
        "",
        "| quantizer | tag purity L1 / L2 / L3 | recon cosine L1 / L2 / L3 | entropy/logK L1 / L2 / L3 | utilisation L1 / L2 / L3 | distinct full SIDs | collision rate | hourglass | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rep in runs.items():
        layers = rep["layers"]
        hg = rep["hourglass_ratio"]
        lines.append(
            f"| {name} | {_fmt([r['purity'] for r in layers])} | {_fmt([r['recon_cos'] for r in layers])} | "
            f"{_fmt([r['entropy_ratio'] for r in layers])} | {_fmt([r['utilisation'] for r in layers])} | "
            f"{rep['sids']['distinct_sids']:,} | {rep['sids']['collision_rate']:.3f} | {'' if hg is None else f'{hg:.2f}'} | {rep['fit_s']} |"
        )
    lines += ["", "Prefix weights w_l actually used (layers 2, 3):", ""]
    for name, rep in runs.items():
        if rep.get("prefix_weights"):
            lines.append(f"- {name}: {', '.join(f'{w:.3f}' for w in rep['prefix_weights'][1:])}")
    lines += ["", "Churn of a refit (seed 1 vs seed 0), share of items whose SID changed:", "",
              "| quantizer | full SID unaligned | full SID aligned | per layer unaligned | per layer aligned |", "|---|---|---|---|---|"]  # fmt: skip
    for name, c in results["churn_refit_seed1"].items():
        lines.append(
            f"| {name} | {c['unaligned']['full_sid']:.3f} | {c['aligned']['full_sid']:.3f} | "
            f"{_fmt(c['unaligned']['per_layer'])} | {_fmt(c['aligned']['per_layer'])} |"
        )
    lines += ["", "Plots:", ""]
    for png in ("side_by_side", "purity_alpha_sweep", "entropy_alpha_sweep", "code_frequency_rq",
                "code_frequency_psrq_alpha1", "code_frequency_psrq_input_anchor"):
        lines.append(f"![quantizers_{png}](img/quantizers_{png}.png)")
    return "\n".join(lines)
