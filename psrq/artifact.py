"""Codebook artifacts: one self-describing directory per fitted quantizer.

    <dir>/centroids.safetensors   every fitted array (float32), by name
    <dir>/manifest.json           method, K per layer, dims, options, normalisation, encoder
                                  model ids, fit-data fingerprint, metrics, created_at, parent

`load_codebook` rebuilds the quantizer from these two files alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from psrq.base import F32, Quantizer
from psrq.factory import quantizer_class

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "centroids.safetensors"


def fingerprint(X: Any) -> dict[str, Any]:
    """sha256 of the data as C-contiguous float32 bytes, with its shape."""
    A = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    return {"sha256": hashlib.sha256(A.tobytes()).hexdigest(), "shape": list(A.shape), "dtype": "float32"}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _parent_ref(parent: Any) -> Any:
    """A parent given as an artifact directory is recorded with its tensors' checksum."""
    if parent is None or isinstance(parent, dict):
        return parent
    path = Path(parent)
    if (path / MANIFEST).is_file():
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        return {"path": str(path.resolve()), "tensors_sha256": manifest.get("tensors_sha256"), "created_at": manifest.get("created_at")}
    return str(parent)


def save_codebook(
    q: Quantizer,
    out_dir: str | Path,
    normalisation: str = "none",
    encoder_model_ids: dict[str, str] | None = None,
    fit_data: Any = None,
    parent: Any = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a fitted quantizer as an artifact directory; returns the manifest."""
    if not q.fitted:
        raise ValueError("cannot save an unfitted quantizer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in q.tensors().items()}
    tmp = out / (TENSORS + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, out / TENSORS)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": "codebook",
        "method": q.method,
        "dim": q.dim,
        "codebook_sizes": list(q.codebook_sizes),
        "num_layers": q.num_layers,
        "options": q.options(),
        "normalisation": normalisation,
        "encoder_model_ids": dict(encoder_model_ids or {}),
        "fit_data": None if fit_data is None else fingerprint(fit_data),
        "metrics": dict(metrics or {}),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "parent": _parent_ref(parent),
        "tensors": {name: list(a.shape) for name, a in tensors.items()},
        "tensors_sha256": _sha256_file(out / TENSORS),
        "extra": dict(extra or {}),
    }
    _write_json_atomic(out / MANIFEST, manifest)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath} not found (not a codebook artifact)")
    manifest: dict[str, Any] = json.loads(mpath.read_text(encoding="utf-8"))
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: artifact format {manifest['format_version']} is newer than this code ({FORMAT_VERSION})")
    return manifest


def load_codebook(path: str | Path) -> tuple[Quantizer, dict[str, Any]]:
    """(quantizer, manifest) from an artifact directory; the tensors' checksum is verified."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("kind", "codebook") != "codebook":
        raise ValueError(f"{path} is a {manifest.get('kind')}, not a single codebook")
    tpath = path / TENSORS
    if not tpath.is_file():
        raise FileNotFoundError(f"{tpath} not found")
    digest = _sha256_file(tpath)
    if manifest.get("tensors_sha256") not in (None, digest):
        raise ValueError(f"{tpath}: sha256 {digest} does not match the manifest (corrupt artifact)")
    tensors: dict[str, F32] = load_file(str(tpath))
    cls = quantizer_class(manifest["method"])
    q = cls.from_state(tensors, dict(manifest["options"]), int(manifest["dim"]), tuple(manifest["codebook_sizes"]))
    return q, manifest
