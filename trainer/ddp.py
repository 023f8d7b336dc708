"""torch.distributed set-up for `torchrun`: gloo on CPU, NCCL on CUDA; a no-op outside torchrun.

torchrun passes the process layout through the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); this module is the one place that reads it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(backend: str | None = None) -> tuple[int, int]:
    """Join the process group if launched by torchrun; returns (rank, world size)."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    log.info("DDP rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@contextmanager
def process_group(backend: str | None = None) -> Iterator[tuple[int, int]]:
    """init() ... destroy_process_group(), for one job."""
    rank_world = init(backend)
    try:
        yield rank_world
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
