"""PSRQ's device-resident fit (psrq.torch_fit, the torch backend's path) against the host-side
loop it replaced (the same torch k-means, numpy between the layers): on the CPU, the same codes
and the same centroids up to float32 rounding, for each anchor and prefix scaling."""

import numpy as np
import pytest
import torch

import psrq.progressive as progressive
from psrq.progressive import PSRQ

pytestmark = pytest.mark.unit


def _data(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    X = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.mark.parametrize(("anchor", "scale", "sizes"), [("prefix", "none", [16, 16, 16]), ("input", "none", [16, 8]),
                                                        ("prefix", "residual_norm", [16, 16, 8]), ("prefix", "none", [1, 8])])
def test_device_fit_matches_the_host_loop(monkeypatch, anchor, scale, sizes):
    X = _data(6000, 24, 0)
    device = PSRQ(sizes, seed=2, kmeans_backend="torch", anchor=anchor, prefix_scale=scale).fit(X)
    # the host loop: the same quantizer with the device path's switch turned off
    monkeypatch.setattr(progressive, "resolve_backend", lambda device, backend: ("host", device))
    host = PSRQ(sizes, seed=2, kmeans_backend="torch", anchor=anchor, prefix_scale=scale).fit(X)
    assert np.allclose(device.prefix_weights, host.prefix_weights, rtol=1e-5)
    for a, b in zip(device.centroids, host.centroids, strict=True):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    assert (device.encode(X) == host.encode(X)).all(axis=1).mean() > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_fit_matches_the_host_loop_in_quality(monkeypatch):
    """On CUDA the distances are TF32 matmuls, so codes may differ in near-ties: same shapes,
    reconstruction within 1 % of the host loop's, and most codes equal."""
    X = _data(20000, 32, 1)
    device = PSRQ([16, 16, 16], seed=0, device="cuda").fit(X)
    monkeypatch.setattr(progressive, "resolve_backend", lambda device, backend: ("host", device))
    host = PSRQ([16, 16, 16], seed=0, device="cuda").fit(X)
    err = [float(np.mean((X - q.decode(q.encode(X))) ** 2)) for q in (device, host)]
    assert abs(err[0] - err[1]) <= 0.01 * err[1], err
    assert (device.encode(X) == host.encode(X)).all(axis=1).mean() > 0.9
