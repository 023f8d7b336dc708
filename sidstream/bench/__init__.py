"""Benchmarks: each prints ratios against a reference measured in the same run."""

from __future__ import annotations

from typing import Any

import numpy as np


def p50_p99(samples: Any, digits: int = 1, scale: float = 1.0) -> dict[str, float]:
    """{"p50", "p99"} of the samples times `scale` (1000: seconds to ms), rounded to `digits`."""
    a = np.asarray(samples, dtype=np.float64) * scale
    return {"p50": round(float(np.percentile(a, 50)), digits), "p99": round(float(np.percentile(a, 99)), digits)}
