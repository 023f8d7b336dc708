"""The torch k-means backend: faiss's contract (seeding rule, niter, float32 [k, d]), the same
codes contract in every quantizer, the backend choice, and a fit with faiss not importable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from psrq import load_codebook, make_quantizer, save_codebook
from psrq.base import nearest
from psrq.clustering import kmeans
from psrq.fitting import fit_codebook
from psrq.health import cosine_rows
from psrq.kmeans import faiss_kmeans, prefix_kmeans
from psrq.kmeans_common import initial_rows, resolve_backend, subsample
from psrq.progressive import path_index
from psrq.torch_kmeans import torch_kmeans, torch_prefix_kmeans
from sidcore.config import CodebookSettings

pytestmark = pytest.mark.unit
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

REPO = Path(__file__).resolve().parents[3]


def blobs(n: int = 3000, d: int = 16, centres: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centres, d)).astype(np.float32) * 10
    labels = rng.integers(0, centres, n)
    return np.ascontiguousarray(C[labels] + 0.3 * rng.standard_normal((n, d)), dtype=np.float32), labels


def clustered(n: int = 3000, d: int = 32, centres: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centres, d)).astype(np.float32) * 3
    X = C[rng.integers(0, centres, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return np.ascontiguousarray(X / np.linalg.norm(X, axis=1, keepdims=True), dtype=np.float32)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b label the rows alike up to a permutation of the labels."""
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def inertia(X: np.ndarray, C: np.ndarray) -> float:
    return float(((X - C[nearest(X, C)]) ** 2).sum(dtype=np.float64))


def recon_cosine(q: object, X: np.ndarray) -> float:
    return float(cosine_rows(X, q.decode(q.encode(X))).mean())  # type: ignore[attr-defined]


# -- the k-means itself ------------------------------------------------------------------------
def test_contract_and_determinism_per_seed() -> None:
    X = clustered()
    C = torch_kmeans(X, 24, seed=3)
    assert C.dtype == np.float32 and C.shape == (24, X.shape[1]) and C.flags.c_contiguous
    assert np.array_equal(C, torch_kmeans(X, 24, seed=3))
    assert not np.array_equal(C, torch_kmeans(X, 24, seed=4))
    assert np.allclose(torch_kmeans(X, 1, seed=0)[0], X.mean(axis=0), atol=1e-6)


def test_finds_well_separated_blobs_and_agrees_with_faiss_from_the_same_start() -> None:
    X, labels = blobs()
    C = torch_kmeans(X, 6, seed=0)
    assert same_partition(nearest(X, C), labels)
    # faiss's Lloyd from the same initial rows (the shared seeding rule) gives the same partition
    import faiss  # here, not at the top: the GPU host runs this module's CUDA tests without faiss

    km = faiss.Kmeans(X.shape[1], 6, niter=20, seed=0, max_points_per_centroid=len(X), min_points_per_centroid=1)
    km.train(X, init_centroids=X[initial_rows(len(X), 6, 0)])
    assert same_partition(nearest(X, km.centroids), nearest(X, C))
    assert np.allclose(km.centroids, C, atol=1e-5)


def test_inertia_within_a_few_percent_of_faiss() -> None:
    X = np.random.default_rng(0).standard_normal((20_000, 64)).astype(np.float32)
    for seed in (0, 1):
        ratio = inertia(X, torch_kmeans(X, 64, seed=seed)) / inertia(X, faiss_kmeans(X, 64, seed=seed))
        assert 0.97 < ratio < 1.03, ratio


def test_empty_clusters_are_split_not_left_dead() -> None:
    # 40 rows on 4 distinct points, K=8: at most 4 clusters can hold points after the first pass
    base = np.eye(4, 8, dtype=np.float32)
    X = np.ascontiguousarray(np.repeat(base, 10, axis=0))
    C = torch_kmeans(X, 8, seed=0, niter=5)
    assert np.isfinite(C).all() and len(np.unique(C, axis=0)) == 8


def test_prefix_kmeans_matches_the_numpy_decomposed_lloyd() -> None:
    X = clustered(n=2000, d=16)
    codes = nearest(X, faiss_kmeans(X, 8, seed=0))[:, None]
    path, first = path_index(codes, (8,))
    prefixes = np.ascontiguousarray(0.5 * faiss_kmeans(X, 8, seed=0)[codes[first, 0]], dtype=np.float32)
    R = np.ascontiguousarray(X - faiss_kmeans(X, 8, seed=0)[codes[:, 0]])
    ours = torch_prefix_kmeans(R, prefixes, path, k=12, seed=2, niter=10)
    numpy_path, _ = prefix_kmeans(R, prefixes, path, k=12, seed=2, niter=10)
    assert ours.shape == numpy_path.shape == (12, 32) and ours.dtype == np.float32
    assert np.allclose(ours, numpy_path, atol=1e-5)


def test_prefix_kmeans_with_a_zero_prefix_is_plain_kmeans() -> None:
    X = clustered(n=1500, d=16)
    zero = np.zeros((1, 16), dtype=np.float32)
    C = torch_prefix_kmeans(X, zero, np.zeros(len(X), dtype=np.int64), k=10, seed=1)
    assert np.array_equal(C[:, :16], torch_kmeans(X, 10, seed=1)) and not C[:, 16:].any()


# -- backend choice ----------------------------------------------------------------------------
def test_backend_resolution() -> None:
    assert resolve_backend() == ("faiss", "cpu")
    assert resolve_backend("cpu", "torch") == ("torch", "cpu")
    assert resolve_backend("cuda:1") == ("torch", "cuda:1")
    assert resolve_backend("auto") == (("torch", "cuda") if torch.cuda.is_available() else ("faiss", "cpu"))
    for device, backend in (("cuda", "faiss"), ("gpu", "auto"), ("cpu", "jax")):
        with pytest.raises(ValueError):
            resolve_backend(device, backend)
    with pytest.raises(ValueError, match="faiss"):
        make_quantizer("rq", [4], device="cuda", kmeans_backend="faiss")
    with pytest.raises(pydantic.ValidationError):
        CodebookSettings(device="gpu")


def test_default_backend_is_the_faiss_path_unchanged() -> None:
    X = clustered()
    q = make_quantizer("rq", [16, 8], seed=5).fit(X)
    rows = subsample(len(X), 16, 5, 256)
    assert rows is None and np.array_equal(q.centroids[0], faiss_kmeans(X, 16, seed=5))
    assert np.array_equal(kmeans(X, 16, 5), faiss_kmeans(X, 16, 5))


# -- quantizers fitted with the torch backend ----------------------------------------------------
SPECS = [
    ("psrq", {}),
    ("psrq", {"prefix_scale": "residual_norm"}),
    ("psrq", {"anchor": "input"}),
    ("rq", {}),
    ("vq", {}),
    ("pq", {}),
    ("psrq_id", {}),
]


@pytest.mark.parametrize(("method", "options"), SPECS)
def test_torch_fit_keeps_the_codes_contract_and_quality(method: str, options: dict[str, object]) -> None:
    X = clustered(n=4000, centres=1000)
    spec = {"method": method, "layers": 3, "codebook_size": 16, "seed": 0, **options}
    fits = {
        backend: [fit_codebook(X, CodebookSettings.model_validate({**spec, "seed": seed, "kmeans_backend": backend}))
                  for seed in range(4)]
        for backend in ("faiss", "torch")
    }  # fmt: skip
    ref, q = fits["faiss"][0], fits["torch"][0]
    assert q.kmeans_backend == "torch"  # type: ignore[attr-defined]
    codes, ref_codes = q.encode(X), ref.encode(X)
    assert codes.dtype == ref_codes.dtype == np.int64 and codes.shape == ref_codes.shape
    assert (codes >= 0).all() and (codes < np.asarray(q.codebook_sizes)).all()
    assert q.semantic_sizes == ref.semantic_sizes
    assert q.tensors().keys() == ref.tensors().keys()
    for name, ours in q.tensors().items():
        theirs = ref.tensors()[name]
        assert ours.dtype == theirs.dtype == np.float32 and ours.shape[1:] == theirs.shape[1:]
        # psrq_id's identity K follows the largest bucket of the fit, which depends on the fit
        assert ours.shape == theirs.shape or int(name.removeprefix("layer")) >= q.semantic_layers
    # quality: the mean over seeds within 1% of faiss's, widened by the seed-to-seed noise
    # (PSRQ with alpha=1 varies by a few % from seed to seed on either backend)
    cos = {backend: np.array([recon_cosine(f, X) for f in fitted]) for backend, fitted in fits.items()}
    noise = 2 * np.sqrt((cos["faiss"].var(ddof=1) + cos["torch"].var(ddof=1)) / len(cos["faiss"]))
    assert abs(cos["torch"].mean() - cos["faiss"].mean()) < 0.01 + noise, cos
    assert "device" not in q.options() and "kmeans_backend" not in q.options()


def test_rqvae_initialises_with_the_torch_backend() -> None:
    X = clustered(n=1000)
    q = make_quantizer("rqvae", [8, 8], seed=0, epochs=1, warmup_epochs=1, kmeans_backend="torch").fit(X)
    codes = q.encode(X)
    assert codes.shape == (len(X), 2) and (codes < 8).all()


def test_a_torch_fitted_artifact_is_a_plain_artifact(tmp_path: Path) -> None:
    X = clustered()
    q = make_quantizer("psrq", [16, 8], seed=0, kmeans_backend="torch").fit(X)
    save_codebook(q, tmp_path / "cb", fit_data=X)
    loaded, manifest = load_codebook(tmp_path / "cb")
    assert "device" not in manifest["options"] and "kmeans_backend" not in manifest["options"]
    assert np.array_equal(loaded.encode(X), q.encode(X))


def test_import_and_torch_fit_without_faiss(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["faiss"] = None  # `import faiss` now raises ImportError
        import numpy as np
        import psrq
        from psrq.fitting import fit_codebook
        from sidcore.config import CodebookSettings

        X = np.random.default_rng(0).standard_normal((1500, 16)).astype(np.float32)
        for method in ("psrq_id", "rq", "pq", "vq"):
            spec = CodebookSettings(method=method, layers=2, codebook_size=8, kmeans_backend="torch")
            q = fit_codebook(X, spec)
            psrq.save_codebook(q, sys.argv[1] + "/" + method)
            assert np.array_equal(psrq.load_codebook(sys.argv[1] + "/" + method)[0].encode(X), q.encode(X))
        try:
            fit_codebook(X, CodebookSettings(method="rq", layers=2, codebook_size=8))
        except ImportError:
            print("faiss path unavailable, torch path fitted")
        """
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "faiss path unavailable, torch path fitted" in out.stdout


# -- CUDA (skipped without a device) ----------------------------------------------------------------
@cuda
@pytest.mark.gpu
def test_cuda_kmeans_agrees_with_the_cpu_torch_path() -> None:
    X, labels = blobs()
    C = torch_kmeans(X, 6, seed=0, device="cuda")
    assert C.dtype == np.float32 and C.shape == (6, X.shape[1])
    assert np.array_equal(C, torch_kmeans(X, 6, seed=0, device="cuda"))  # deterministic per seed
    assert same_partition(nearest(X, C), labels)
    Y = np.random.default_rng(0).standard_normal((20_000, 64)).astype(np.float32)
    ratio = inertia(Y, torch_kmeans(Y, 64, seed=0, device="cuda")) / inertia(Y, torch_kmeans(Y, 64, seed=0))
    assert 0.98 < ratio < 1.02, ratio


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("method", ["psrq", "rq", "psrq_id"])
def test_cuda_fit_matches_the_faiss_fit(method: str) -> None:
    X = clustered()
    spec = {"method": method, "layers": 3, "codebook_size": 16, "seed": 0}
    ref = fit_codebook(X, CodebookSettings.model_validate(spec))
    q = fit_codebook(X, CodebookSettings.model_validate({**spec, "device": "cuda"}))
    assert q.encode(X).shape == ref.encode(X).shape
    assert abs(recon_cosine(q, X) - recon_cosine(ref, X)) < 0.01
