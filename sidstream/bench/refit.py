"""`sidstream bench refit`: how many existing tracks keep their IDs when the catalogue grows and the
codebooks are refitted, warm (psrq.fitting.warm_child: from the parent's codebooks, the default) or
fresh + aligned (psrq.fitting.fresh_aligned: today's fresh fit relabelled to agree with the parent).

Per seed s: the parent is fitted (seed s) on a random (1 - grow) share of the catalogue, the child
on all of it. Per method, the median over seeds of:
- kept_path: share of the existing tracks whose full semantic path (all semantic layers) is the
  parent's; kept_layers: the same per layer;
- kept_unique (psrq_id): share of the existing tracks whose full unique ID (semantic path and
  identity codes) is the parent's, the identity codes claimed as the stream and the backfill claim
  them (streams.identity.TableIdentities: the parent's claims first, then the child's in catalogue
  order with the parent version as the hint version); hint_collisions: hints found taken;
- recon_ratio: the child's reconstruction cosine on the catalogue over the median of the fresh
  fits' (the same data, every seed);
- guard_fallbacks (warm): seeds where the drift guard (psrq.fitting.drift_reasons) would take the
  fresh fit instead.
- auc_live_on_new / auc_retrained (psrq_id, Last.fm only; sidstream.bench.refit_auc): the median
  Cold AUC of the live ranker trained on the parent's SIDs and scored on the child's without
  retraining, and of the same ranker retrained on the child's (warm: both; fresh: the live ranker
  on the fresh + aligned child's SIDs, not retrained); "auc" adds the paired difference
  live_on_new - retrained with its 95 % interval. `--auc-seeds 0` skips the rankers.

Data: `--input EMB.npy` (rows = items), else the Last.fm-2k artists' text embeddings through
`settings.lastfm_source` (as `bench ids` reads them). K and L default to the settings' codebook.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from sidstream.bench.refit_auc import auc_runs, auc_summary

METHODS = ("psrq_id", "psrq", "rq", "vq", "pq")  # the default set (the refit results table's)
EXTRA_METHODS = ("rqvae",)  # warm refits too, on request (an RQ-VAE fit takes minutes)


def _semantic(q: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(q.semantic_encode(X) if hasattr(q, "semantic_encode") else q.encode(X))[:, : q.semantic_layers]


def _full_ids(parent: Any, child: Any, X: np.ndarray, old: np.ndarray) -> tuple[float, int]:
    """Share of the existing rows whose full psrq_id ID survives, and the hints found taken."""
    from streams.identity import TableIdentities

    reg = TableIdentities()
    items = np.array([f"t{i}" for i in range(len(X))])

    def claim(q: Any, version: str, rows: np.ndarray, hint: str | None) -> np.ndarray:
        sem = q.semantic_encode(X[rows])
        composite, failed = reg.resolve(version, "text", q.capacity, items[rows].tolist(), sem,
                                        q.identity_query(X[rows], sem), hint)
        if failed:
            raise click.ClickException(f"{len(failed)} identity claims failed: {next(iter(failed.values()))}")
        return np.concatenate([sem, q.split(composite)], axis=1)

    before = claim(parent, "v0", old, None)
    after = claim(child, "v1", np.arange(len(X)), "v0")[old]
    return float((before == after).all(axis=1).mean()), reg.hint_collisions


def _one(method: str, X: np.ndarray, old: np.ndarray, spec: Any) -> dict[str, Any]:
    from psrq.fitting import drift_reasons, fit_codebook, fit_quality, fresh_aligned, warm_child

    parent = fit_codebook(X[old], spec)
    started = time.perf_counter()
    children = {"warm": warm_child(X, spec, parent)}
    warm_s = time.perf_counter() - started
    children["fresh"] = fresh_aligned(X, spec, parent)
    before = _semantic(parent, X[old])
    out: dict[str, Any] = {}
    for name, q in children.items():
        now = _semantic(q, X[old])
        row = {"kept_path": float((now == before).all(axis=1).mean()), "kept_layers": (now == before).mean(axis=0).tolist(),
               "quality": fit_quality(q, X)}
        if method == "psrq_id":
            row["kept_unique"], row["hint_collisions"] = _full_ids(parent, q, X, old)
        out[name] = row
    out["warm"]["fit_s"] = warm_s
    out["warm"]["guard"] = drift_reasons(out["warm"]["quality"], out["fresh"]["quality"], spec.refit_max_drift,
                                         spec.refit_max_utilisation_drop)
    return out


def _median(values: list[Any]) -> Any:
    """Median over seeds: a float, or a list (element-wise) for per-layer values."""
    m = np.median(np.asarray(values, dtype=np.float64), axis=0).round(4)
    return m.tolist() if np.ndim(m) else float(m)


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and kind, the medians over seeds (recon_ratio: over the fresh fits' median)."""
    fresh_recon = float(np.median([s["fresh"]["quality"]["recon_cosine"] for s in per_seed]))
    out: dict[str, Any] = {}
    for kind in ("warm", "fresh"):
        rows = [s[kind] for s in per_seed]
        out[kind] = {key: _median([r[key] for r in rows]) for key in ("kept_path", "kept_layers")}
        out[kind]["kept_unique"] = _median([r["kept_unique"] for r in rows]) if "kept_unique" in rows[0] else None
        if "hint_collisions" in rows[0]:
            out[kind]["hint_collisions"] = int(np.median([r["hint_collisions"] for r in rows]))
        out[kind]["recon_ratio"] = round(float(np.median([r["quality"]["recon_cosine"] for r in rows])) / fresh_recon, 4)
        out[kind]["auc_live_on_new"] = out[kind]["auc_retrained"] = None
    out["warm"]["guard_fallbacks"] = sum(bool(s["warm"]["guard"]) for s in per_seed)
    out["warm"]["fit_s"] = round(float(np.median([s["warm"]["fit_s"] for s in per_seed])), 2)
    return out


def run_refit(X: np.ndarray, methods: tuple[str, ...], k: int, layers: int, grow: float, seeds: int,
              spec_base: Any) -> dict[str, Any]:
    """The bench's JSON: {"methods": {method: {"warm": {...}, "fresh": {...}}}, ...}."""
    n_old = int(round((1.0 - grow) * len(X)))
    if not 0 < n_old < len(X):
        raise click.ClickException(f"--grow {grow} leaves {n_old} of {len(X)} items for the parent")
    out: dict[str, Any] = {"bench": "refit", "items": int(len(X)), "dim": int(X.shape[1]), "K": k, "layers": layers,
                           "grow": grow, "seeds": seeds, "margin": spec_base.refit_margin, "iters": spec_base.refit_iters,
                           "methods": {}}
    for method in methods:
        per_seed = []
        for seed in range(seeds):
            old = np.sort(np.random.default_rng(seed).permutation(len(X))[:n_old])
            spec = spec_base.model_copy(update={"method": method, "codebook_size": k, "layers": layers, "seed": seed})
            per_seed.append(_one(method, X, old, spec))
        out["methods"][method] = summarise(per_seed)
    return out


def add_auc(out: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """The live-ranker comparison's medians into psrq_id's rows (sidstream.bench.refit_auc)."""
    summary = auc_summary(runs)
    row = out["methods"]["psrq_id"]
    row["warm"].update(auc_live_on_new=summary["auc_live_on_new"], auc_retrained=summary["auc_retrained"])
    row["fresh"]["auc_live_on_new"] = summary["auc_live_on_fresh"]
    out["auc"] = {**summary, "seeds": len(runs), "per_seed": runs}


def table(out: dict[str, Any]) -> str:
    lines = ["| method | refit | kept path | kept per layer | kept unique ID | recon / fresh median | guard fallbacks |",
             "|---|---|---|---|---|---|---|"]
    for method, kinds in out["methods"].items():
        for kind in ("warm", "fresh"):
            r = kinds[kind]
            unique = "—" if r["kept_unique"] is None else f"{r['kept_unique']:.4f}"
            fallbacks = f"{r['guard_fallbacks']}/{out['seeds']}" if kind == "warm" else "—"
            lines.append(f"| {method} | {kind} | {r['kept_path']:.4f} | {' / '.join(f'{v:.4f}' for v in r['kept_layers'])} | "
                         f"{unique} | {r['recon_ratio']:.4f} | {fallbacks} |")
    if "auc" in out:
        a, d = out["auc"], out["auc"]["live_on_new_minus_retrained"]
        lines.append(f"\npsrq_id Cold AUC (median of {a['seeds']} seeds): live ranker on the parent's IDs {a['auc_live_on_old']:.4f}, "
                     f"on the warm child's {a['auc_live_on_new']:.4f}, on the fresh child's {a['auc_live_on_fresh']:.4f}; retrained "
                     f"on the warm child's {a['auc_retrained']:.4f}; live on new - retrained {d['mean_diff']:+.4f} "
                     f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")
    return "\n".join(lines)


def load_items(path: Path | None) -> tuple[np.ndarray, str]:
    """(embeddings float32 [n, d], what they are): --input, else Last.fm-2k's text embeddings."""
    from sidcore.config import get_settings

    if path is not None:
        return np.ascontiguousarray(np.load(path), dtype=np.float32), str(path)
    source = get_settings().lastfm_source
    if source is None:
        raise click.ClickException("bench refit needs --input EMB.npy or the Last.fm-2k folder (SIDSTREAM_LASTFM_DIR)")
    from sidstream.bench.ids import lastfm_items

    return lastfm_items(source)[1], f"lastfm-2k text ({source})"


@click.command("refit")
@click.option("--input", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="embeddings .npy [n, d] (default: Last.fm-2k's text embeddings via settings.lastfm_source)")
@click.option("--grow", type=float, default=0.1, show_default=True, help="share of the catalogue added by the refit")
@click.option("--seeds", type=int, default=5, show_default=True, help="paired seeds (medians are reported)")
@click.option("--layers", type=int, default=None, help="semantic layers [settings.codebook.layers]")
@click.option("--codebook-size", "k", type=int, default=None, help="K per layer [settings.codebook.codebook_size]")
@click.option("--methods", default=",".join(METHODS), show_default=True,
              help=f"comma-separated quantizer methods (also: {', '.join(EXTRA_METHODS)})")
@click.option("--auc-seeds", type=int, default=None,
              help="psrq_id on Last.fm: seeds of the live-ranker comparison [--seeds; 0: skip; never with --input]")
@click.option("--epochs", type=int, default=3, show_default=True, help="ranker epochs of the comparison")
@click.option("--json", "as_json", is_flag=True, help="print only the JSON line")
def command(path: Path | None, grow: float, seeds: int, layers: int | None, k: int | None, methods: str,
            auc_seeds: int | None, epochs: int, as_json: bool) -> None:
    """IDs kept by a refit when the catalogue grows: warm-started vs fresh + aligned, per method."""
    from sidcore.config import get_settings

    base = get_settings().codebook
    X, what = load_items(path)
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = sorted(set(chosen) - set(METHODS + EXTRA_METHODS))
    if unknown:
        raise click.ClickException(f"unknown method(s) {unknown}; warm refits exist for {', '.join(METHODS + EXTRA_METHODS)}")
    k, layers = k or base.codebook_size, layers or base.layers
    out = run_refit(X, chosen, k, layers, grow, seeds, base)
    out["data"] = what
    auc_seeds = seeds if auc_seeds is None else auc_seeds
    if path is None and auc_seeds > 0 and "psrq_id" in chosen:
        add_auc(out, auc_runs(get_settings().lastfm_source, k, layers, grow, auc_seeds, epochs, base))
    if not as_json:
        click.echo(table(out))
    click.echo(json.dumps(out))
