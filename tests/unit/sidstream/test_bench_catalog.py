"""`sidstream bench catalog` runs end to end on small sizes (the figures need a quiet machine)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from sidstream.bench.catalog import _PeakAnon, command


def test_catalog_bench_reports_every_size_and_a_full_torch_fit(tmp_path: Path) -> None:
    res = CliRunner().invoke(command, ["--sizes", "3000,9000", "--dim", "16", "--codebook-size", "8", "--fit-n", "4000",
                                       "--kmeans-backend", "torch", "--tmp", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert [e["n"] for e in out["encode"]] == [3000, 9000]
    assert all(e["items_per_s"] > 0 and e["extra_anon_mb"] >= 0 for e in out["encode"])
    assert 0 < out["flatness_min_over_max"] <= 1
    assert out["fit"] == {"n": 4000, "seconds": out["fit"]["seconds"], "read_rows_s": out["fit"]["read_rows_s"],
                          "device": "cpu", "kmeans_backend": "torch", "points": "all"}
    assert out["fit"]["seconds"] > 0 and out["fit"]["read_rows_s"] >= 0
    assert list(tmp_path.iterdir()) == []  # the memory-mapped rows are removed


def test_peak_anon_sees_an_allocation() -> None:
    import numpy as np

    with _PeakAnon() as mem:
        block = np.ones((64, 2**20 // 8 * 4), dtype=np.float64)  # 256 MB, touched
        block.sum()
        del block
    assert mem.extra_mb > 200
