"""Codebook artifacts and codebook sets: save -> load -> encode is bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from psrq import (
    fingerprint,
    joint_embedding,
    load_codebook,
    load_codebook_set,
    make_quantizer,
    save_codebook,
    save_codebook_set,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((800, 16)).astype(np.float32)


@pytest.mark.parametrize("method", ["psrq", "rq", "vq", "pq", "rqvae"])
def test_round_trip_is_bit_exact(method: str, X: np.ndarray, tmp_path: Path) -> None:
    extra = {"epochs": 2, "warmup_epochs": 1} if method == "rqvae" else {}
    q = make_quantizer(method, [8, 6, 4], seed=3, alpha=0.5, **extra).fit(X)
    manifest = save_codebook(q, tmp_path / "cb", normalisation="l2", encoder_model_ids={"text": "m"}, fit_data=X)
    q2, loaded = load_codebook(tmp_path / "cb")
    assert type(q2) is type(q)
    assert loaded == manifest
    codes = q.encode(X)
    assert np.array_equal(q2.encode(X), codes)
    assert np.array_equal(q2.decode(codes), q.decode(codes))
    assert q2.codebook_sizes == q.codebook_sizes and q2.dim == q.dim


def test_manifest_describes_the_fit(X: np.ndarray, tmp_path: Path) -> None:
    q = make_quantizer("psrq", [8, 4], seed=1, alpha=0.25, prefix_scale="residual_norm").fit(X)
    save_codebook(q, tmp_path / "parent", fit_data=X)
    save_codebook(q, tmp_path / "cb", normalisation="l2", encoder_model_ids={"text": "minilm"}, fit_data=X,
                  parent=tmp_path / "parent", metrics={"recon_cos": 0.5}, extra={"note": "x"})  # fmt: skip
    m = json.loads((tmp_path / "cb" / "manifest.json").read_text())
    assert m["method"] == "psrq" and m["codebook_sizes"] == [8, 4] and m["dim"] == 16
    assert m["options"]["alpha"] == 0.25 and m["options"]["prefix_scale"] == "residual_norm"
    assert len(m["options"]["prefix_weights"]) == 2 and m["options"]["prefix_weights"][1] > 0
    assert m["fit_data"] == fingerprint(X) and m["fit_data"]["shape"] == [800, 16]
    assert m["normalisation"] == "l2" and m["encoder_model_ids"] == {"text": "minilm"}
    assert m["metrics"] == {"recon_cos": 0.5} and m["extra"] == {"note": "x"}
    assert m["parent"]["path"].endswith("parent") and m["parent"]["tensors_sha256"]
    assert m["created_at"].endswith("+00:00") and m["format_version"] == 1
    assert fingerprint(X) != fingerprint(X[:-1])


def test_corrupt_tensors_are_refused(X: np.ndarray, tmp_path: Path) -> None:
    q = make_quantizer("rq", [4], seed=0).fit(X)
    save_codebook(q, tmp_path / "cb")
    path = tmp_path / "cb" / "centroids.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupt"):
        load_codebook(tmp_path / "cb")
    with pytest.raises(FileNotFoundError):
        load_codebook(tmp_path / "missing")


def test_codebook_set_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    T = rng.standard_normal((500, 12)).astype(np.float32)
    A = rng.standard_normal((500, 8)).astype(np.float32)
    J = joint_embedding(T, A)
    qs = {
        "text": make_quantizer("psrq", [8, 8], seed=0).fit(T),
        "audio": make_quantizer("rq", [6, 6], seed=0).fit(A),
        "joint": make_quantizer("psrq", [8, 8], seed=0).fit(J),
    }
    save_codebook_set(tmp_path / "v1", qs, manifests_extra={"encoder_model_ids": {"text": "t-id", "audio": "a-id"}, "source": "test"})
    cs = load_codebook_set(tmp_path / "v1")
    assert cs.modalities == ["audio", "joint", "text"]
    assert cs.manifest["source"] == "test" and cs.manifest["dims"] == {"text": 12, "audio": 8, "joint": 20}
    assert cs.manifests["joint"]["encoder_model_ids"] == {"text": "t-id", "audio": "a-id"}
    assert cs.manifests["audio"]["encoder_model_ids"] == {"audio": "a-id"}
    for modality, X in (("text", T), ("audio", A), ("joint", J)):
        assert np.array_equal(cs.encode(modality, X), qs[modality].encode(X))
    save_codebook_set(tmp_path / "v2", {"text": qs["text"]})  # any subset
    only_text = load_codebook_set(tmp_path / "v2")
    with pytest.raises(ValueError, match="no 'audio' codebook"):
        only_text.encode("audio", A)
    with pytest.raises(ValueError, match="unknown modalities"):
        save_codebook_set(tmp_path / "v3", {"video": qs["text"]})


def test_joint_embedding_normalises_each_side() -> None:
    T = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    A = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    J = joint_embedding(T, A)
    assert J.dtype == np.float32 and J.shape == (2, 5)
    np.testing.assert_allclose(J[0], [0.6, 0.8, 0.0, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(J[1], [0.0, 0.0, 1.0, 0.0, 0.0])  # a zero side stays zero
    with pytest.raises(ValueError, match="same n"):
        joint_embedding(T, A[:1])


@pytest.mark.parametrize("method", ["psrq", "rqvae"])
def test_load_in_a_fresh_process_is_bit_exact(method: str, X: np.ndarray, tmp_path: Path) -> None:
    import subprocess
    import sys

    extra = {"epochs": 2, "warmup_epochs": 1} if method == "rqvae" else {}
    q = make_quantizer(method, [8, 8], seed=0, **extra).fit(X)
    save_codebook(q, tmp_path / "cb")
    np.save(tmp_path / "X.npy", X)
    script = (
        "import numpy as np, sys; from psrq import load_codebook; "
        f"q, _ = load_codebook({str(tmp_path / 'cb')!r}); np.save({str(tmp_path / 'codes.npy')!r}, q.encode(np.load({str(tmp_path / 'X.npy')!r})))"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    assert np.array_equal(np.load(tmp_path / "codes.npy"), q.encode(X))
