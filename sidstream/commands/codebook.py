"""`sidstream codebook fit | assign | report`.

Every failure a user can cause (missing or unreadable file, wrong dims, NaN/inf rows,
K > n, empty input) ends with a non-zero exit and one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args

import click
import numpy as np

from psrq.base import F32
from sidcore.config import QuantizerMethod

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> None:
    raise click.ClickException(" ".join(str(message).split()))


def _guarded(fn: F) -> F:
    """Turn expected user errors into one-line ClickExceptions."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except (ValueError, FileNotFoundError, OSError, KeyError) as exc:
            _fail(f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc))

    return wrapper  # type: ignore[return-value]


def load_matrix(path: Path) -> F32:
    """A 2-D float32 array from .npy (no pickles); one-line ValueErrors."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a corrupt file
        raise ValueError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D [n, d] array, got shape {getattr(arr, 'shape', None)}")
    if arr.shape[0] == 0:
        raise ValueError(f"{path}: no rows")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: expected numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _load_any(codebook: Path, modality: str | None) -> tuple[Any, dict[str, Any]]:
    from psrq.artifact import load_codebook, read_manifest
    from psrq.codebook_set import load_codebook_set

    manifest = read_manifest(codebook)
    if manifest.get("kind") == "codebook_set":
        cs = load_codebook_set(codebook)
        if modality is None:
            if len(cs.codebooks) != 1:
                raise ValueError(f"{codebook} is a codebook set with {cs.modalities}: pass --modality")
            modality = cs.modalities[0]
        if modality not in cs.codebooks:
            raise ValueError(f"{codebook} has no {modality!r} codebook (has {cs.modalities})")
        return cs.codebooks[modality], cs.manifests[modality]
    return load_codebook(codebook)


@click.group()
def codebook() -> None:
    """Fit, assign and report PSRQ / RQ / VQ / PQ / RQ-VAE codebooks."""


@codebook.command()
@click.option("--method", type=click.Choice(list(get_args(QuantizerMethod))), default=None, help="[settings.codebook.method]")
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True, help="X.npy, float32 [n, d]")
@click.option("--layers", type=int, default=None, help="[settings.codebook.layers]")
@click.option("--codebook-size", type=int, default=None, help="K per layer [settings.codebook.codebook_size]")
@click.option("--alpha", type=float, default=None, help="PSRQ prefix weight, 1 = the paper [settings.codebook.alpha]")
@click.option("--prefix-scale", type=click.Choice(["none", "residual_norm", "residual_spread"]), default=None,
              help="[settings.codebook.prefix_scale]")
@click.option("--anchor", type=click.Choice(["prefix", "input"]), default=None,
              help="PSRQ semantic half: quantized prefix (paper) or the input embedding (variant) [settings.codebook.anchor]")
@click.option("--seed", type=int, default=None, help="[settings.codebook.seed]")
@click.option("--min-points-per-code", type=int, default=None, help="K is capped at rows // this [settings.codebook]")
@click.option("--device", default=None, help="k-means device: cpu, cuda, cuda:N, auto [settings.codebook.device]")
@click.option("--kmeans-backend", type=click.Choice(["auto", "faiss", "torch"]), default=None,
              help="auto: faiss on cpu, torch on cuda [settings.codebook.kmeans_backend]")
@click.option("--normalisation", default="none", show_default=True, help="recorded in the manifest")
@click.option("--parent", type=click.Path(path_type=Path), default=None, help="parent version: refit from it (codebook.refit: warm, or fresh and aligned)")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@_guarded
def fit(input_path: Path, normalisation: str, parent: Path | None, out_dir: Path, **overrides: Any) -> None:
    """Fit a codebook on X.npy and write a versioned artifact directory (settings.codebook,
    with the options given on top; K is capped as in every fit: psrq.fitting)."""
    from psrq.align import churn
    from psrq.artifact import load_codebook, save_codebook
    from psrq.fitting import fit_codebook, refit_codebook
    from psrq.health import health_report
    from sidcore.config import get_settings

    base = get_settings().codebook
    spec = base.model_validate({**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    X = load_matrix(input_path)
    parent_q = None
    if parent is not None:
        parent_q, _ = load_codebook(parent)
        if parent_q.dim != X.shape[1]:
            _fail(f"parent dim {parent_q.dim} != input dim {X.shape[1]}")
    refit = None
    if parent_q is None:
        q = fit_codebook(X, spec)
    else:  # the retraining job's refit: warm from the parent (codebook.refit), else fresh and aligned
        q, refit = refit_codebook(X, spec, parent_q)
    metrics: dict[str, Any] = {"health": health_report(q, X)}
    if parent_q is not None:
        metrics["churn"] = churn(parent_q.encode(X), q.encode(X))
        metrics["refit"] = refit
    manifest = save_codebook(q, out_dir, normalisation=normalisation, fit_data=X, parent=parent, metrics=metrics)
    click.echo(json.dumps({"out": str(out_dir), "method": manifest["method"], "codebook_sizes": manifest["codebook_sizes"],
                           "dim": manifest["dim"], "distinct_sids": metrics["health"]["sids"]["distinct_sids"],
                           "churn": metrics.get("churn"), "refit": refit}))  # fmt: skip


@codebook.command()
@click.option("--codebook", "codebook_dir", type=click.Path(path_type=Path), required=True)
@click.option("--modality", default=None, help="for a codebook set: text | audio | joint")
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True)
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="codes.npy, int64 [n, L]")
@click.option("--skip-bad", is_flag=True, help="write -1 for NaN/inf rows (listed on stderr) instead of failing")
@_guarded
def assign(codebook_dir: Path, modality: str | None, input_path: Path, out_path: Path, skip_bad: bool) -> None:
    """Encode X.npy with a frozen codebook; NaN/inf rows are reported, never coded."""
    q, _ = _load_any(codebook_dir, modality)
    X = load_matrix(input_path)
    if X.shape[1] != q.dim:
        _fail(f"{input_path}: input dim {X.shape[1]} != codebook dim {q.dim}")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad) and not skip_bad:
        shown = ", ".join(map(str, bad[:10].tolist())) + (" ..." if len(bad) > 10 else "")
        _fail(f"{input_path}: {len(bad)} row(s) with NaN/inf: {shown} (use --skip-bad to code the rest)")
    codes = np.full((len(X), q.num_layers), -1, dtype=np.int64)
    good = np.flatnonzero(np.isfinite(X).all(axis=1))
    if len(good):
        codes[good] = q.encode(X[good])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, codes)
    if len(bad):
        click.echo(f"skipped {len(bad)} NaN/inf row(s), coded -1: {bad[:20].tolist()}", err=True)
    click.echo(json.dumps({"out": str(out_path), "rows": int(len(X)), "coded": int(len(good)), "skipped": int(len(bad))}))


@codebook.command()
@click.option("--codebook", "codebook_dir", type=click.Path(path_type=Path), required=True)
@click.option("--modality", default=None, help="for a codebook set: text | audio | joint")
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True)
@click.option("--labels", "labels_path", type=click.Path(path_type=Path), default=None, help="one label per line")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True)
@_guarded
def report(
    codebook_dir: Path, modality: str | None, input_path: Path, labels_path: Path | None,
    plots_dir: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Health of a codebook on X.npy: utilisation, entropy, recon cosine, purity, collisions."""
    from psrq.health import health_report

    q, _ = _load_any(codebook_dir, modality)
    X = load_matrix(input_path)
    labels = None
    if labels_path is not None:
        if not labels_path.is_file():
            raise FileNotFoundError(f"{labels_path}: no such file")
        labels = np.asarray(labels_path.read_text(encoding="utf-8").splitlines())
        if len(labels) != len(X):
            _fail(f"{labels_path}: {len(labels)} labels for {len(X)} rows")
    codes = q.encode(X)
    rep = health_report(q, X, labels=labels, codes=codes)
    if plots_dir is not None:
        from psrq.plots import write_report_plots

        rep["plots"] = [str(p) for p in write_report_plots(rep, codes, plots_dir)]
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{rep['method']} K={rep['codebook_sizes']} dim={rep['dim']}")
    cols = ["layer", "utilisation", "entropy_ratio", "recon_cos", "distinct_paths"] + (["purity", "purity_path"] if labels is not None else [])
    for c in cols:
        table.add_column(c, justify="right")
    for row in rep["layers"]:
        table.add_row(*[f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols])
    console = Console()
    console.print(table)
    sids = rep["sids"]
    console.print(f"distinct SIDs {sids['distinct_sids']} / {sids['items']}, collision rate {sids['collision_rate']:.3f}, "
                  f"hourglass ratio {rep['hourglass_ratio']}")  # fmt: skip


def main() -> None:  # pragma: no cover - `python -m sidstream.commands.codebook`
    codebook(prog_name="codebook")
    sys.exit(0)


@codebook.command()
@click.argument("version")
@click.option("--backfill/--no-backfill", default=True, show_default=True,
              help="re-code the catalogue under VERSION in Feast before it goes live (readers switch at the end)")
@click.option("--force", is_flag=True, help="promote even if VERSION does not cover what the live version serves")
def promote(version: str, backfill: bool, force: bool) -> None:
    """Make a registered codebook VERSION live (a rollback is the promotion of an older one).

    The structural gate runs first (modalities, encoders, dims vs the live version); then the
    catalogue is backfilled under VERSION from the kept embeddings, and readers and assigners
    switch to it at one point. With --no-backfill the pointer flips at once and is published.
    """
    from psrq import load_codebook_set
    from sidcore.config import get_settings
    from sidcore.registry import Registry, RegistryError
    from sidstream.cli import UserError
    from streams.admin.topics import TopicNames
    from streams.control import PublishError, publish_codebook_version
    from trainer.jobs import GateRefused, gate_and_promote

    s = get_settings()
    registry = Registry(s.registry_dir)
    try:
        target = registry.get("codebooks", version)
    except RegistryError as exc:
        raise UserError(str(exc)) from exc
    live = registry.live("codebooks")
    previous = live.version if live else None
    names = TopicNames(s.kafka.topic_prefix)
    reports: list[dict[str, Any]] = []

    def go_live(av: Any) -> None:
        if backfill:
            from streams.backfill import run_backfill

            reports.append(run_backfill(s, version, names.kept, names.control, identity_topic=names.identity))
            return
        registry.promote("codebooks", version)
        try:
            publish_codebook_version(s.kafka, names.control, version, str(av.path))
        except PublishError as exc:
            click.echo(f"warning: {exc} (assigners pick the version up at their next registry poll)", err=True)

    try:
        gate_and_promote(registry, target, load_codebook_set(live.path) if live is not None else None, s.codebook, None,
                         force, go_live, manual=True)
    except GateRefused as exc:
        raise UserError(f"{exc} (--force overrides)") from exc
    click.echo(json.dumps({"promoted": version, "previous": previous, "backfill": reports[0] if reports else None}))
