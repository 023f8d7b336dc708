"""`sidstream bench catalog`: re-coding a whole catalogue in one call, and one full codebook fit.

Encode: a PSRQ fitted once (K, L) on the first rows, then ``encode`` of n rows for each n in
``--sizes``. The rows live in a memory-mapped file, written block by block, so the input is not
process memory; the figure is the peak of the process's *anonymous* resident memory during the
call (``RssAnon`` in /proc/self/status, sampled every 5 ms) above its level before the call: what
the encode itself allocates. Reported: items/s per size, the extra MB per size, and flatness
(slowest / fastest items/s). Goal (the speed issue): flat items/s from 10k to 10M rows, bounded
extra memory.

Fit (``--fit-n``): one 3-layer PSRQ fit of that many rows with ``--device`` /
``--kmeans-backend`` (psrq.kmeans_common.resolve_backend), on all points by default (the issue's GPU row:
10M x 384, K = 256, < 30 s on one H100/H200), or with faiss's subsampling (``--fit-subsample``).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from sidstream.bench.quantize import _data

BLOCK = 65_536


def _rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class _PeakAnon:
    """Peak anonymous RSS while the block runs, sampled every 5 ms in a thread."""

    def __enter__(self) -> _PeakAnon:
        self.before = self.peak = _rss_anon_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_anon_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon_mb())

    @property
    def extra_mb(self) -> float:
        return self.peak - self.before


def _memmap(path: Path, n: int, dim: int) -> np.memmap:
    """n rows of the benchmark's Gaussian mixture, written block by block (bounded memory); the
    blocks are generated in threads (numpy's generators release the GIL), each from its own seed,
    so the rows do not depend on the thread count."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))

    def write(start: int) -> None:
        stop = min(n, start + BLOCK)
        X[start:stop] = _data(stop - start, dim, seed=start // BLOCK)

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(write, range(0, n, BLOCK)))
    X.flush()
    return np.load(path, mmap_mode="r")


@click.command()
@click.option("--sizes", default="10000,100000,1000000", show_default=True, help="catalogue sizes to encode")
@click.option("--dim", default=384, show_default=True)
@click.option("--codebook-size", "k", default=256, show_default=True)
@click.option("--layers", default=3, show_default=True)
@click.option("--method", type=click.Choice(["psrq", "rq"]), default="psrq", show_default=True)
@click.option("--fit-n", type=int, default=0, show_default=True, help="also time one fit of this many rows (0: no)")
@click.option("--device", default="cpu", show_default=True, help="the fit's k-means device (cpu, cuda, auto)")
@click.option("--kmeans-backend", type=click.Choice(["auto", "faiss", "torch"]), default="auto", show_default=True)
@click.option("--fit-subsample", is_flag=True, help="fit on faiss's subsample (256 points per centroid) instead of all points")
@click.option("--tmp", type=click.Path(file_okay=False, path_type=Path), default=None, help="folder for the memory-mapped rows")
@click.option("--json", "as_json", is_flag=True)
def command(sizes: str, dim: int, k: int, layers: int, method: str, fit_n: int, device: str, kmeans_backend: str,
            fit_subsample: bool, tmp: Path | None, as_json: bool) -> None:
    """Whole-catalogue encode: items/s and extra memory from 10k rows up; optionally one full fit."""
    import psutil

    from psrq.kmeans import DEFAULT_MAX_POINTS_PER_CENTROID
    from psrq.progressive import PSRQ
    from psrq.rq import RQ

    ns = sorted(int(s) for s in sizes.split(",") if s.strip())
    report: dict[str, Any] = {"bench": "catalog", "method": method, "dim": dim, "K": k, "layers": layers,
                              "cpus": psutil.cpu_count(), "encode": []}
    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        fit_rows = max(fit_n, min(100_000, max(ns)), 40 * k)
        X_fit = _memmap(Path(folder) / "fit.npy", fit_rows, dim)
        cap = (fit_rows // k + 1) if not fit_subsample else DEFAULT_MAX_POINTS_PER_CENTROID
        cls: Any = PSRQ if method == "psrq" else RQ
        q = cls([k] * layers, seed=0, device=device, kmeans_backend=kmeans_backend,
                max_points_per_centroid=cap if fit_n else DEFAULT_MAX_POINTS_PER_CENTROID)
        started = time.perf_counter()
        rows = np.array(X_fit[: fit_n or fit_rows])  # read into memory outside the fit's clock
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        q.fit(rows)
        fit_s = time.perf_counter() - started
        del rows
        if fit_n:
            report["fit"] = {"n": fit_n, "seconds": round(fit_s, 2), "read_rows_s": round(load_s, 2),
                             "device": device, "kmeans_backend": kmeans_backend,
                             "points": "all" if not fit_subsample else f"{DEFAULT_MAX_POINTS_PER_CENTROID} per centroid"}
        del X_fit
        q.encode(_data(1000, dim))  # warm-up
        for n in ns:
            X = _memmap(Path(folder) / f"x{n}.npy", n, dim)
            with _PeakAnon() as mem:
                t0 = time.perf_counter()
                codes = q.encode(X)
                secs = time.perf_counter() - t0
            assert codes.shape == (n, q.num_layers)
            report["encode"].append({"n": n, "seconds": round(secs, 3), "items_per_s": round(n / secs),
                                     "extra_anon_mb": round(mem.extra_mb, 1), "codes_mb": round(codes.nbytes / 2**20, 1)})
            del X, codes
            (Path(folder) / f"x{n}.npy").unlink()
    rates = [e["items_per_s"] for e in report["encode"]]
    report["flatness_min_over_max"] = round(min(rates) / max(rates), 3)
    report["extra_anon_mb_max"] = max(e["extra_anon_mb"] for e in report["encode"])
    if as_json:
        click.echo(json.dumps(report))
    else:
        for e in report["encode"]:
            click.echo(f"{e['n']:>11,} rows  {e['items_per_s']:>9,} items/s  +{e['extra_anon_mb']:.0f} MB (codes {e['codes_mb']} MB)")
        click.echo(f"flatness (slowest / fastest): {report['flatness_min_over_max']}")
        if "fit" in report:
            click.echo(f"fit: {json.dumps(report['fit'])}")
