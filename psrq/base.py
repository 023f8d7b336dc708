"""The shared quantizer interface, input validation and the nearest-centroid kernel."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

# rows per block in nearest-centroid search: bounds the [rows, K] distance block in memory
SEARCH_BLOCK = 16384
# rows per finishing chunk of a search block (the adds and the argmin after its sgemm): small
# enough to stay in cache, and the chunks of a block run on the worker threads
FINISH_CHUNK = 2048
# rows per block of a whole-catalogue encode: bounds the residual / prefix / code-path arrays,
# so memory stays flat and items/s stays level from 10k to millions of rows
ENCODE_BLOCK = 65536


def encode_in_blocks(X: F32, num_layers: int, encode_block: Any) -> I64:
    """codes [n, L] from `encode_block` applied to ENCODE_BLOCK-row slices of X (a view each)."""
    if X.shape[0] <= ENCODE_BLOCK:
        out: I64 = encode_block(X)
        return out
    codes = np.empty((X.shape[0], num_layers), dtype=np.int64)
    for start in range(0, X.shape[0], ENCODE_BLOCK):
        codes[start : start + ENCODE_BLOCK] = encode_block(X[start : start + ENCODE_BLOCK])
    return codes


def _bad_rows(X: np.ndarray) -> list[int]:
    """Rows with NaN/inf, checked ENCODE_BLOCK rows at a time: the check's boolean temporaries
    stay bounded whatever the size of X (a whole catalogue at once would allocate n x d bytes)."""
    bad: list[int] = []
    for start in range(0, X.shape[0], ENCODE_BLOCK):
        rows = np.flatnonzero(~np.isfinite(X[start : start + ENCODE_BLOCK]).all(axis=1))
        bad.extend((rows + start).tolist())
    return bad


def _row_list(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} rows)" if len(rows) > limit else "")


def _finite_f32(X: Any, what: str) -> F32:
    """C-contiguous float32 view or copy of numeric X; NaN/inf rows are named in the error."""
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {X.dtype}")
    out: F32 = np.ascontiguousarray(X, dtype=np.float32)
    bad = _bad_rows(out)
    if bad:
        raise ValueError(f"{what} has NaN/inf in rows {_row_list(bad)}")
    return out


def check_fit_input(X: Any, codebook_sizes: tuple[int, ...]) -> F32:
    """Validate training data; returns a C-contiguous float32 copy-or-view. One-line ValueErrors."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"fit data must be 2-D [n, d], got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"fit data is empty (shape {X.shape})")
    out = _finite_f32(X, "fit data")
    kmax = max(codebook_sizes)
    if kmax > out.shape[0]:
        raise ValueError(f"codebook size K={kmax} exceeds the number of fit rows n={out.shape[0]}")
    return out


def check_encode_input(X: Any, dim: int) -> F32:
    """Validate data to encode against the codebook's dimension; NaN rows are named, never coded."""
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2:
        raise ValueError(f"input must be 2-D [n, d], got shape {X.shape}")
    if X.shape[1] != dim:
        raise ValueError(f"input dim {X.shape[1]} != codebook dim {dim}")
    return _finite_f32(X, "input")


def check_sizes(codebook_sizes: Any) -> tuple[int, ...]:
    sizes = tuple(int(k) for k in codebook_sizes)
    if not sizes:
        raise ValueError("codebook_sizes must name at least one layer")
    if any(k < 1 for k in sizes):
        raise ValueError(f"codebook sizes must be >= 1, got {list(sizes)}")
    return sizes


_T = TypeVar("_T")
_pool: tuple[int, ThreadPoolExecutor] | None = None


def worker_count() -> int:
    """Threads for the numpy / scipy work around BLAS calls: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def run_parallel(fn: Callable[[_T], None], items: Iterable[_T]) -> None:
    """fn(item) for every item, on a process-wide thread pool (inline with one worker or item).

    For numpy / scipy kernels that release the GIL; each item must write disjoint outputs, so the
    results do not depend on the thread count or the order. The pool is rebuilt in a forked child
    (a child inherits the pool object but not its threads)."""
    global _pool
    todo = list(items)
    if len(todo) <= 1 or worker_count() == 1:
        for item in todo:
            fn(item)
        return
    pid = os.getpid()
    if _pool is None or _pool[0] != pid:
        _pool = (pid, ThreadPoolExecutor(max_workers=worker_count(), thread_name_prefix="psrq"))
    for future in [_pool[1].submit(fn, item) for item in todo]:
        future.result()


def nearest(X: F32, C: F32, table: F32 | None = None, table_rows: I64 | None = None) -> I64:
    """argmin_j ||X[i] - C[j]||^2 (+ table[table_rows[i], j]) for every row, in BLAS blocks.

    ||x||^2 is constant per row and dropped; the -2 is folded into the centroid matrix, so each
    block is one sgemm into a reused buffer, one add and one argmin. The optional table adds a
    per-row-group term, which is how PSRQ's prefix half enters (see psrq.progressive). Ties go
    to the lowest j. The adds and the argmin of a block run in FINISH_CHUNK-row chunks on worker
    threads (element-wise, so the result is the same as one pass over the block).
    """
    return _search(X, C, table, table_rows, None)


def nearest_two(X: F32, C: F32, table: F32 | None = None, table_rows: I64 | None = None) -> tuple[I64, F32, F32]:
    """nearest(), plus each row's smallest score and its smallest score over the other
    centroids (inf when K = 1), where a score is the float32 value nearest's argmin reads:
    ||x - c_j||^2 - ||x||^2 (+ the table term), computed by the very same operations."""
    scores = (np.empty(X.shape[0], dtype=np.float32), np.empty(X.shape[0], dtype=np.float32))
    return _search(X, C, table, table_rows, scores), scores[0], scores[1]


def _search(X: F32, C: F32, table: F32 | None, table_rows: I64 | None, scores: tuple[F32, F32] | None) -> I64:
    n = X.shape[0]
    out = np.empty(n, dtype=np.int64)
    c_norms = np.einsum("ij,ij->i", C, C)
    Ct2 = np.ascontiguousarray(C.T * np.float32(-2.0))
    buf = np.empty((min(n, SEARCH_BLOCK), C.shape[0]), dtype=np.float32)

    def finish(rows: tuple[int, int]) -> None:  # rows [a, b) of X, inside the current block
        a, b = rows
        d = buf[a - start : b - start]
        d += c_norms
        if table is not None and table_rows is not None:
            d += table[table_rows[a:b]]
        best = d.argmin(axis=1)
        out[a:b] = best
        if scores is not None:
            at = np.arange(b - a)
            scores[0][a:b] = d[at, best]
            d[at, best] = np.inf
            scores[1][a:b] = d.min(axis=1)

    for start in range(0, n, SEARCH_BLOCK):
        stop = min(n, start + SEARCH_BLOCK)
        np.matmul(X[start:stop], Ct2, out=buf[: stop - start])
        run_parallel(finish, [(a, min(stop, a + FINISH_CHUNK)) for a in range(start, stop, FINISH_CHUNK)])
    return out


def check_codes(codes: Any, codebook_sizes: tuple[int, ...]) -> I64:
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[None, :]
    if codes.ndim != 2 or codes.shape[1] != len(codebook_sizes):
        raise ValueError(f"codes must be [n, {len(codebook_sizes)}], got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    out: I64 = codes.astype(np.int64, copy=False)
    sizes = np.asarray(codebook_sizes, dtype=np.int64)
    if out.size and ((out < 0).any() or (out >= sizes).any()):
        raise ValueError("codes out of range for the codebook sizes " + str(list(codebook_sizes)))
    return out


class Quantizer(abc.ABC):
    """fit(X) -> self, encode(X) -> int64 [n, L], decode(codes) -> float32 [n, d].

    Subclasses also expose their fitted state as named float32 tensors plus JSON options
    (`state` / `from_state`), which is all an artifact needs to rebuild them.
    """

    method: ClassVar[str]

    def __init__(self, codebook_sizes: Any, seed: int = 0) -> None:
        self.codebook_sizes: tuple[int, ...] = check_sizes(codebook_sizes)
        self.seed = int(seed)
        self._dim: int | None = None

    @property
    def num_layers(self) -> int:
        return len(self.codebook_sizes)

    @property
    def semantic_layers(self) -> int:
        """Leading layers that carry meaning (all, except psrq_id's trailing identity codes)."""
        return len(self.codebook_sizes)

    @property
    def semantic_sizes(self) -> list[int]:
        """K of each semantic layer (what a ranker embeds)."""
        return list(self.codebook_sizes[: self.semantic_layers])

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise RuntimeError(f"{self.method} quantizer is not fitted")
        return self._dim

    @property
    def fitted(self) -> bool:
        return self._dim is not None

    @abc.abstractmethod
    def fit(self, X: Any) -> Quantizer: ...

    @abc.abstractmethod
    def encode(self, X: Any) -> I64: ...

    def decode(self, codes: Any) -> F32:
        """Full reconstruction from codes."""
        return self.decode_prefix(codes, self.num_layers)

    @abc.abstractmethod
    def decode_prefix(self, codes: Any, layers: int) -> F32:
        """Reconstruction using only the first `layers` layers of each code (for per-layer health)."""

    @abc.abstractmethod
    def options(self) -> dict[str, Any]:
        """JSON-able hyper-parameters and fitted scalars (stored in the manifest)."""

    @abc.abstractmethod
    def tensors(self) -> dict[str, F32]:
        """Fitted arrays by name (stored in safetensors)."""

    @classmethod
    @abc.abstractmethod
    def from_state(
        cls, tensors: dict[str, F32], options: dict[str, Any], dim: int, codebook_sizes: tuple[int, ...]
    ) -> Quantizer: ...

    def __repr__(self) -> str:
        dim = self._dim if self._dim is not None else "?"
        return f"{type(self).__name__}(K={list(self.codebook_sizes)}, dim={dim})"
