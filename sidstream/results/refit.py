"""The `refit` table (docs/results/refit.md): IDs kept by a refit of a grown catalogue, warm vs fresh +
aligned, per method (sidstream.bench.refit), and psrq_id's live ranker on the warm child's IDs
against the same ranker retrained (sidstream.bench.refit_auc), over paired seeds.

Full: Last.fm-2k text, K = 64, 3 layers, `grow` 0.1, 10 seeds (seed s: the parent's codebook seed,
the random catalogue split, the ranker seed), DIN + psrq_id's semantic layers, 3 epochs.
`--quick`: the planted groups of the quantizer study, K = 8, 3 seeds, no rankers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FULL = {"k": 64, "layers": 3, "grow": 0.1, "seeds": 10, "epochs": 3}
QUICK = {"k": 8, "layers": 3, "grow": 0.1, "seeds": 3, "epochs": 0}
# Done-when of issue 32 (psrq_id warm, medians over seeds)
GOALS = {"kept_path": 0.98, "kept_unique": 0.97, "recon_ratio": 0.995, "diff_low": -0.005}


def run(X: np.ndarray, plan: dict[str, Any], lastfm_dir: Any = None) -> dict[str, Any]:
    """The bench's JSON on X (and the ranker comparison on Last.fm when `lastfm_dir` and epochs)."""
    from sidcore.config import CodebookSettings
    from sidstream.bench.refit import METHODS, add_auc, run_refit
    from sidstream.bench.refit_auc import auc_runs

    base = CodebookSettings()
    out = run_refit(X, METHODS, plan["k"], plan["layers"], plan["grow"], plan["seeds"], base)
    if lastfm_dir is not None and plan["epochs"] > 0:
        add_auc(out, auc_runs(lastfm_dir, plan["k"], plan["layers"], plan["grow"], plan["seeds"], plan["epochs"], base))
    return out


def verdicts(out: dict[str, Any]) -> dict[str, str]:
    """Per method: warm keeps more paths than fresh + aligned; psrq_id's goals; the ranker's verdict."""
    from sidstream.results.stats import verdict

    v: dict[str, str] = {}
    for method, kinds in out["methods"].items():
        w, f = kinds["warm"]["kept_path"], kinds["fresh"]["kept_path"]
        v[f"{method}_warm_kept_path_vs_fresh"] = "higher" if w > f else "lower" if w < f else "equal"
    warm = out["methods"]["psrq_id"]["warm"]
    v["psrq_id_kept_path_ge_0.98"] = "yes" if warm["kept_path"] >= GOALS["kept_path"] else "no"
    v["psrq_id_kept_unique_ge_0.97"] = "yes" if (warm["kept_unique"] or 0) >= GOALS["kept_unique"] else "no"
    v["psrq_id_recon_ratio_ge_0.995"] = "yes" if warm["recon_ratio"] >= GOALS["recon_ratio"] else "no"
    if "auc" in out:
        d = out["auc"]["live_on_new_minus_retrained"]
        v["live_on_new_vs_retrained"] = verdict(d["mean_diff"], d["p"])
        v["live_on_new_minus_retrained_low_above_-0.005"] = "yes" if d["ci_low"] > GOALS["diff_low"] else "no"
    return v


def markdown(out: dict[str, Any], data_line: str) -> tuple[str, dict[str, str]]:
    from sidstream.bench.refit import table

    v = verdicts(out)
    lines = [f"{data_line} {out['items']:,} items, K = {out['K']}, {out['layers']} layers, catalogue grown by "
             f"{out['grow']:.0%}, medians of {out['seeds']} paired seeds; warm: {out['iters']} iterations, margin "
             f"{out['margin']}.", "", table(out)]
    if "auc" in out:
        lines += ["", "| seed | kept path | Cold AUC live on old | live on new (warm) | retrained | live on new - retrained | "
                      "live on fresh + aligned |", "|---|---|---|---|---|---|---|"]
        for r in out["auc"]["per_seed"]:
            lines.append(f"| {r['seed']} | {r['kept_path']:.4f} | {r['live_on_old']['cold_auc']:.4f} | "
                         f"{r['live_on_new']['cold_auc']:.4f} | {r['retrained']['cold_auc']:.4f} | "
                         f"{r['live_on_new']['cold_auc'] - r['retrained']['cold_auc']:+.4f} | "
                         f"{r['live_on_fresh']['cold_auc']:.4f} |")
        d = out["auc"]["live_on_new_minus_retrained"]
        lines += ["", f"live on new - retrained, Cold AUC: mean {d['mean_diff']:+.4f}, 95 % interval "
                      f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], paired t p = {d['p']:.3g}, {d['wins']} wins / "
                      f"{d['losses']} losses."]
    lines += ["", "Verdicts: " + ", ".join(f"`{k}` {val}" for k, val in v.items())]
    return "\n".join(lines), v
