"""Health metrics on hand-made cases where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from psrq import make_quantizer
from psrq.health import health_report, purity, sid_collisions

pytestmark = pytest.mark.unit


def test_purity_by_hand() -> None:
    groups = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([0, 0, 1, 1, 1, 0])
    assert purity(groups, labels) == pytest.approx((2 + 2 + 1) / 6)
    assert purity(np.zeros(4, np.int64), np.array([0, 1, 2, 3])) == pytest.approx(0.25)


def test_sid_collisions_by_hand() -> None:
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 1], [0, 1]])
    s = sid_collisions(codes)
    assert s == {"items": 5, "distinct_sids": 3, "collision_rate": pytest.approx(3 / 5), "max_items_per_sid": 3}


class _Fixed:
    """A hand-made 2-layer quantizer stand-in with known codes and reconstructions."""

    method = "fixed"
    codebook_sizes = (4, 2)
    num_layers = 2
    dim = 2

    def __init__(self) -> None:
        self.C1 = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
        self.C2 = np.array([[0.1, 0], [0, 0.1]], np.float32)

    def encode(self, X: np.ndarray) -> np.ndarray:
        return np.array([[0, 0], [0, 1], [1, 0], [1, 0]], np.int64)[: len(X)]

    def decode_prefix(self, codes: np.ndarray, layers: int) -> np.ndarray:
        out = self.C1[codes[:, 0]]
        return out + self.C2[codes[:, 1]] if layers >= 2 else out


def test_health_report_on_known_codes() -> None:
    X = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], np.float32)
    labels = np.array(["rock", "rock", "jazz", "rock"])
    rep = health_report(_Fixed(), X, labels=labels)  # type: ignore[arg-type]
    l1, l2 = rep["layers"]
    assert l1["codes_used"] == 2 and l1["utilisation"] == 0.5
    assert l1["entropy_ratio"] == pytest.approx(np.log(2) / np.log(4))
    assert l2["utilisation"] == 1.0 and l2["entropy_ratio"] == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)) / np.log(2))
    assert l1["purity"] == pytest.approx(3 / 4)  # {rock, rock} + {jazz, rock}
    assert l2["purity"] == pytest.approx(3 / 4)  # code 0: {rock, jazz, rock}, code 1: {rock}
    assert l2["purity_path"] == pytest.approx(3 / 4)
    cos1 = np.mean([1.0, 1 / np.sqrt(1.01), 1.0, 1 / np.sqrt(1.01)])
    assert l1["recon_cos"] == pytest.approx(cos1, rel=1e-5)
    assert rep["sids"]["distinct_sids"] == 3 and rep["sids"]["collision_rate"] == pytest.approx(0.5)
    assert rep["hourglass_ratio"] is None  # needs >= 3 layers
    assert rep["ids"]["distinct_ratio"] == 0.75 and rep["ids"]["largest_bucket"] == 2


def test_collapse_shows_in_health() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 8)).astype(np.float32)
    rep = health_report(make_quantizer("rq", [16, 16, 16], seed=0).fit(X), X)
    assert all(r["utilisation"] == 1.0 for r in rep["layers"])
    assert [r["recon_cos"] for r in rep["layers"]] == sorted(r["recon_cos"] for r in rep["layers"])
    assert rep["hourglass_ratio"] == pytest.approx(1.0, abs=0.2)
    # all items on one point: one code used, everything collides
    Z = np.tile(X[:1], (50, 1))
    Z[0] += 1e-3
    rep = health_report(make_quantizer("rq", [2, 2], seed=0).fit(Z), Z)
    assert rep["sids"]["distinct_sids"] <= 4 and rep["sids"]["collision_rate"] > 0.9
