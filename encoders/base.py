"""The one encoder protocol, its input error, and helpers every encoder shares."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

log = logging.getLogger(__name__)


class EncoderInputError(ValueError):
    """An item an encoder cannot embed (empty text, bad waveform); the message is one line."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        self.reason = one_line(reason)
        self.index = index
        super().__init__(self.reason if index is None else f"item {index}: {self.reason}")


@runtime_checkable
class Encoder(Protocol):
    """What every encoder offers: a stable id, an output width, and batch encoding."""

    model_id: str
    dim: int

    def encode(self, batch: Sequence[Any]) -> np.ndarray:
        """Embed a batch; returns float32 [len(batch), dim], rows L2-normalised."""
        ...


def one_line(message: object) -> str:
    """Collapse an exception message to one line (reasons go to logs, DLQs and stderr)."""
    text = " ".join(str(message).split())
    return text if text else type(message).__name__


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' or None picks CUDA when present; an explicit CUDA request without CUDA is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch.cuda.is_available() is False")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Map a config string to a torch dtype; fp16 on CPU falls back to float32 (slow/unsupported ops)."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        try:
            resolved = _DTYPES[str(dtype).lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None
    if device.type == "cpu" and resolved is torch.float16:
        log.warning("float16 on CPU is not supported well; using float32")
        return torch.float32
    return resolved
