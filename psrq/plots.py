"""PNG plots of health reports (matplotlib is imported here only, lazily by callers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from psrq.base import I64


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_code_frequency(codes: I64, codebook_sizes: tuple[int, ...], path: str | Path, title: str = "") -> Path:
    """Sorted code frequencies per layer (log scale): flat is healthy, a cliff is collapse."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for layer, k in enumerate(codebook_sizes):
        freq = np.sort(np.bincount(codes[:, layer], minlength=k))[::-1] / len(codes)
        ax.plot(np.arange(1, k + 1), freq, label=f"layer {layer + 1}")
    ax.set_yscale("log")
    ax.set_xlabel("code rank")
    ax.set_ylabel("share of items")
    ax.set_title(title or "code frequency per layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_layer_metric(reports: dict[str, dict[str, Any]], metric: str, path: str | Path, title: str = "") -> Path:
    """One line per quantizer: a per-layer metric (purity, recon_cos, utilisation, ...)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, report in reports.items():
        rows = [r for r in report["layers"] if metric in r]
        if rows:
            ax.plot([r["layer"] for r in rows], [r[metric] for r in rows], marker="o", label=name)
    ax.set_xlabel("layer")
    ax.set_xticks(range(1, max(len(rep["layers"]) for rep in reports.values()) + 1))
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_side_by_side(reports: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Purity, reconstruction cosine and utilisation per layer, quantizers side by side."""
    plt = _pyplot()
    metrics = [m for m in ("purity", "recon_cos", "entropy_ratio") if any(m in r for rep in reports.values() for r in rep["layers"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.5))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        for name, report in reports.items():
            rows = [r for r in report["layers"] if metric in r]
            ax.plot([r["layer"] for r in rows], [r[metric] for r in rows], marker="o", label=name)
        ax.set_title(metric)
        ax.set_xlabel("layer")
        ax.set_xticks(range(1, max(len(rep["layers"]) for rep in reports.values()) + 1))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_report_plots(report: dict[str, Any], codes: I64, out_dir: str | Path) -> list[Path]:
    """The standard plots for one health report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = tuple(report["codebook_sizes"])
    paths = [plot_code_frequency(codes, sizes, out / "code_frequency.png", f"{report['method']}: code frequency")]
    name = report["method"]
    paths.append(plot_layer_metric({name: report}, "recon_cos", out / "recon_cos.png"))
    if any("purity" in r for r in report["layers"]):
        paths.append(plot_layer_metric({name: report}, "purity", out / "purity.png"))
    return paths
