"""Native thread pools of a long-running process that handles small batches.

numpy's OpenBLAS (and the copy bundled with faiss) starts one worker thread per core and, after
each call, keeps them busy-waiting for more work for a while before they sleep. A streaming
worker calls BLAS with a handful of rows every few tens of milliseconds, so those threads never
get to sleep: on a 2-core host the PSRQ assigner's idle OpenBLAS thread burned ~0.8 of a core at
50 tracks/s, taken from the text encoder next to it (docs/results/pipeline.md). Small matrix products
gain nothing from a second thread, so the workers run BLAS (and faiss's OpenMP) on
`stream.blas_threads` threads, 1 by default. torch's own intra-op pool is left alone: the
encoders size it per batch (settings.encoders.threads / busy_batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolLimit:
    user_api: str  # "blas" | "openmp"
    library: str  # file name of the shared library
    before: int
    after: int


def limit_native_threads(threads: int) -> list[PoolLimit]:
    """Set every loaded BLAS library, and every OpenMP runtime but torch's, to `threads`
    threads; returns what changed. Only libraries already loaded are seen: call it after the
    imports that load numpy, faiss and torch."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    from threadpoolctl import ThreadpoolController

    changed: list[PoolLimit] = []
    for lib in ThreadpoolController().lib_controllers:
        path = str(lib.filepath)
        if lib.user_api == "openmp" and "/torch/" in path.replace("\\", "/"):
            continue  # torch's pool: torch.set_num_threads, per batch, in the encoders
        if lib.user_api not in ("blas", "openmp"):
            continue
        before = int(lib.num_threads)
        if before != threads:
            lib.set_num_threads(threads)
        changed.append(PoolLimit(lib.user_api, path.rsplit("/", 1)[-1], before, int(lib.num_threads)))
    return changed
