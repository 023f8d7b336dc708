"""`sidstream bench ids`: do the IDs identify? RQ, PSRQ, psrq_id and TIGER's counter on Last.fm.

Data: the Last.fm-2k artists (12,133 with tags), text "<name>. Tags: top 5" through the
shipped MiniLM (embeddings cached), label = the artist's top tag. K = 64, 3 semantic layers.
For each quantizer: distinct ratio of the full ID, largest bucket (items sharing a full ID,
and items sharing the semantic prefix), per-semantic-layer purity / NMI and their lift over a
random partition with the same size histogram, H(c_l | c_<l) / log K, reconstruction cosine of
the full ID, fit seconds, single-track online assignment p50/p99 (psrq_id: semantic encode,
identity distances, nearest free code and claim on an in-memory table already holding the
rest of the catalogue), and Cold AUC of DIN + the quantizer's semantic layers as SID features.

Rows: "rq" (3 layers), "rq5" (5 layers: the same number of codes as psrq_id), "psrq"
(alpha = 1, the paper), "tiger" (PSRQ + TIGER's counter as 2 base-K digits: same bits as
psrq_id), "psrq_id" (PSRQ + 2 identity codes). TIGER's ranker features are PSRQ's (the counter
is never embedded), so its AUC is not run again: the row points to PSRQ's.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from sidstream.bench import p50_p99


def lastfm_items(src: Path | None) -> tuple[Any, np.ndarray, list[str]]:
    from sidcore.config import get_settings
    from trainer.embeddings import TextEncoding
    from trainer.lastfm_convert import convert_lastfm, embed_items

    s = get_settings()
    folder = src or s.lastfm_dir
    if folder is None or folder == "sample" or not (Path(folder) / "artists.dat").is_file():
        raise click.ClickException(f"bench ids needs the Last.fm-2k folder (--lastfm or SIDSTREAM_LASTFM_DIR); got {folder}")
    ds = embed_items(convert_lastfm(Path(folder)), TextEncoding.from_settings(s))
    X = ds.embeddings["text"]
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    labels = [list(t)[0] for t in ds.items["tags"]]
    return ds, X, labels


def _online(method: str, q: Any, X: np.ndarray, probes: int) -> dict[str, float]:
    """Single-track assignment latency on the last `probes` rows, the rest already assigned."""
    from psrq.identity import IdentityTable, counter_suffix

    head, tail = X[:-probes], X[-probes:]
    times: list[float] = []
    if method == "psrq_id":
        table = IdentityTable(q.capacity)
        q.assign(head, table, [f"h{i}" for i in range(len(head))])
        for i in range(probes):
            t0 = time.perf_counter()
            q.assign(tail[i : i + 1], table, [f"p{i}"])
            times.append(time.perf_counter() - t0)
    elif method == "tiger":
        sem = q.encode(head)
        counts: dict[tuple[int, ...], int] = {}
        for key, c in zip(map(tuple, sem.tolist()), counter_suffix(sem).tolist(), strict=True):
            counts[key] = max(counts.get(key, 0), c + 1)
        for i in range(probes):
            t0 = time.perf_counter()
            key = tuple(q.encode(tail[i : i + 1])[0].tolist())
            counts[key] = counts.get(key, 0) + 1
            times.append(time.perf_counter() - t0)
    else:
        for i in range(probes):
            t0 = time.perf_counter()
            q.encode(tail[i : i + 1])
            times.append(time.perf_counter() - t0)
    return p50_p99(times, digits=4, scale=1000)


def _tiger_codes(sem: np.ndarray, k: int, digits: int) -> np.ndarray:
    from psrq.identity import counter_suffix

    counter = counter_suffix(sem)
    cols = [(counter // k ** (digits - 1 - j)) % k for j in range(digits)]
    return np.concatenate([sem, np.stack(cols, axis=1)], axis=1)


def _row(name: str, codes: np.ndarray, semantic_layers: int, sizes: list[int], labels: list[str], X: np.ndarray,
         recon: np.ndarray, fit_s: float, online: dict[str, float]) -> dict[str, Any]:
    from psrq.health import cosine_rows, id_report

    rep = id_report(codes, semantic_layers, sizes, labels)
    _, full_counts = np.unique(codes, axis=0, return_counts=True)
    return {
        "quantizer": name, "codes_per_id": int(codes.shape[1]), "bits": round(float(np.log2(np.asarray(sizes, dtype=np.float64)).sum()), 1),
        "distinct_ratio": round(rep["distinct_ratio"], 4), "largest_id_group": int(full_counts.max()),
        "largest_bucket": rep["largest_bucket"], "semantic_buckets": rep["buckets"],
        "purity": [round(r["purity"], 3) for r in rep["layers"]],
        "purity_random": [round(r["purity_random"], 3) for r in rep["layers"]],
        "purity_lift": [round(r["purity_lift"], 3) for r in rep["layers"]],
        "nmi": [round(r["nmi"], 3) for r in rep["layers"]],
        "nmi_random": [round(r["nmi_random"], 3) for r in rep["layers"]],
        "cond_entropy": [round(r["cond_entropy"], 3) for r in rep["layers"]],
        "recon_cos_full_id": round(float(cosine_rows(X, recon).mean()), 4),
        "fit_s": round(fit_s, 2), "online_ms": online,
    }


def run_ids(src: Path | None, k: int, layers: int, seed: int, probes: int, auc_seeds: int, epochs: int,
            items: tuple[Any, np.ndarray, list[str]] | None = None) -> dict[str, Any]:
    """The table's rows; `items` = (data set, embeddings, labels) instead of Last.fm from `src`."""
    from psrq.fitting import fit_codebook
    from sidcore.config import CodebookSettings

    ds, X, labels = items if items is not None else lastfm_items(src)
    rows: list[dict[str, Any]] = []
    fitted: dict[str, Any] = {}
    for name, method, n_layers in (("rq", "rq", layers), ("rq5", "rq", layers + 2), ("psrq", "psrq", layers), ("psrq_id", "psrq_id", layers)):
        spec = CodebookSettings(method=method, layers=n_layers, codebook_size=k, alpha=1.0, seed=seed)
        t0 = time.perf_counter()
        q = fit_codebook(X, spec)
        fit_s = time.perf_counter() - t0
        fitted[name] = q
        codes = q.encode(X)
        L = q.semantic_layers if method == "psrq_id" else min(n_layers, layers)
        rows.append(_row(name, codes, L, list(q.codebook_sizes), labels, X, q.decode(codes), fit_s, _online(method, q, X, probes)))
        if name == "psrq":
            digits = 2
            tiger = _tiger_codes(codes, k, digits)
            rows.append(_row("tiger", tiger, layers, list(q.codebook_sizes) + [k] * digits, labels, X, q.decode(codes), fit_s,
                             _online("tiger", q, X, probes)))
            rows[-1]["unique_possible"] = bool(np.unique(codes, axis=0, return_counts=True)[1].max() <= k**digits)
    out: dict[str, Any] = {"bench": "ids", "items": int(len(X)), "K": k, "semantic_layers": layers, "seed": seed,
                           "identity_size": fitted["psrq_id"].identity_size, "rows": rows,
                           "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}}
    out["refit"] = _refit_survival(fitted["psrq_id"], X, k, layers, seed)
    if auc_seeds > 0:
        out["cold_auc"] = _cold_auc(ds, k, layers, auc_seeds, epochs)
        for row in rows:
            model = {"rq": "din+rq", "psrq": "din+psrq", "psrq_id": "din+psrq_id", "tiger": "din+psrq"}.get(row["quantizer"])
            if model is not None:
                row["cold_auc"] = out["cold_auc"][model]["cold_auc"]
                row["cold_auc_std"] = out["cold_auc"][model]["cold_auc_std"]
                row["cold_auc_from"] = model
    return out


def _refit_survival(old: Any, X: np.ndarray, k: int, layers: int, seed: int) -> dict[str, float]:
    """Share of IDs kept by a refit with another seed, aligned to its parent (psrq.align), when
    the new version's identity codes are claimed with the old version's as hints, and without."""
    from psrq.align import align_to_parent
    from psrq.fitting import fit_codebook
    from sidcore.config import CodebookSettings
    from streams.identity import TableIdentities

    new = align_to_parent(fit_codebook(X, CodebookSettings(layers=layers, codebook_size=k, seed=seed + 1)), old, X)
    items = [f"a{i}" for i in range(len(X))]

    def claim(reg: Any, q: Any, version: str, hint: str | None) -> np.ndarray:
        sem = q.semantic_encode(X)
        composite, failed = reg.resolve(version, "text", q.capacity, items, sem, q.identity_distances(X, sem), hint)
        assert not failed, failed
        return np.concatenate([sem, q.split(composite)], axis=1)

    reg = TableIdentities()
    before = claim(reg, old, "v0", None)
    hinted = claim(reg, new, "v1", "v0")
    plain = claim(TableIdentities(), new, "v1", None)
    prefix_kept = (before[:, :layers] == hinted[:, :layers]).all(axis=1)
    return {"semantic_prefix_kept": round(float(prefix_kept.mean()), 4),
            "full_id_kept_with_hints": round(float((before == hinted).all(axis=1).mean()), 4),
            "full_id_kept_without_hints": round(float((before == plain).all(axis=1).mean()), 4),
            "unique_after_refit": bool(len(np.unique(hinted, axis=0)) == len(X))}


def _cold_auc(ds: Any, k: int, layers: int, seeds: int, epochs: int) -> dict[str, Any]:
    import torch

    from sidcore.config import CodebookSettings, get_settings
    from trainer.evaluate import evaluate, prepare
    from trainer.models import ModelConfig
    from trainer.train_loop import TrainConfig

    torch.set_num_threads(1)
    prep = prepare(ds)
    results = evaluate(prep, ["din+rq", "din+psrq", "din+psrq_id"], seeds, ModelConfig(),
                       CodebookSettings(layers=layers, codebook_size=k), TrainConfig(epochs=epochs), get_settings().cache_dir / "codes")
    return {r["model"]: {key: r[key] for key in ("cold_auc", "cold_auc_std", "all_auc", "all_auc_std", "seconds") if key in r}
            | {"cold_auc_per_seed": [round(x["cold_auc"], 4) for x in r["per_seed"]]} for r in results}


def table(out: dict[str, Any]) -> str:
    head = ("| quantizer | codes (bits) | distinct ratio | largest ID group / bucket | purity L1/L2/L3 | lift over random | "
            "H(c_l given c_<l)/logK | recon cos (full ID) | fit s | online p50 / p99 ms | Cold AUC |")
    lines = [head, "|" + "---|" * 11]
    for r in out["rows"]:
        auc = f"{r['cold_auc']:.4f} ± {r['cold_auc_std']:.4f}" if "cold_auc" in r else "—"
        if r["quantizer"] == "tiger" and "cold_auc" in r:
            auc = "= psrq (same features)"
        lines.append(
            f"| {r['quantizer']} | {r['codes_per_id']} ({r['bits']:g}) | {r['distinct_ratio']:.4f} | {r['largest_id_group']} / {r['largest_bucket']} | "
            f"{' / '.join(f'{v:.3f}' for v in r['purity'])} | {' / '.join(f'{v:+.3f}' for v in r['purity_lift'])} | "
            f"{' / '.join(f'{v:.3f}' for v in r['cond_entropy'])} | {r['recon_cos_full_id']:.4f} | {r['fit_s']} | "
            f"{r['online_ms']['p50']:.3f} / {r['online_ms']['p99']:.3f} | {auc} |"
        )
    r = out["refit"]
    lines.append(f"\nrefit (seed {out['seed'] + 1}, aligned): semantic prefix kept {r['semantic_prefix_kept']:.3f}, full ID kept "
                 f"{r['full_id_kept_with_hints']:.3f} with hints / {r['full_id_kept_without_hints']:.3f} without; "
                 f"unique after the refit: {r['unique_after_refit']}")
    return "\n".join(lines)


@click.command("ids")
@click.option("--lastfm", "src", type=click.Path(path_type=Path), default=None, help="Last.fm-2k folder [settings.lastfm_dir]")
@click.option("--codebook-size", "k", type=int, default=64, show_default=True)
@click.option("--layers", type=int, default=3, show_default=True, help="semantic layers")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--probes", type=int, default=1000, show_default=True, help="single-track assignments timed")
@click.option("--auc-seeds", type=int, default=3, show_default=True, help="ranker seeds for Cold AUC (0: skip the rankers)")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print only the JSON line")
def command(src: Path | None, k: int, layers: int, seed: int, probes: int, auc_seeds: int, epochs: int, as_json: bool) -> None:
    """Unique-ID quality on Last.fm: RQ, PSRQ, TIGER's counter and psrq_id side by side."""
    out = run_ids(src, k, layers, seed, probes, auc_seeds, epochs)
    if not as_json:
        click.echo(table(out))
    click.echo(json.dumps(out))
