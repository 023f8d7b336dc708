"""The codebook versions an assigner codes with: the live one and, during a backfill, the pending
one, loaded from the registry and swapped as a whole when a pointer changes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from psrq import load_codebook_set
from sidcore.registry import Registry

log = logging.getLogger(__name__)


class CodebookSetLike(Protocol):
    codebooks: dict[str, Any]
    manifest: dict[str, Any]

    def encode(self, modality: str, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ActiveCodebooks:
    """The assigner's frozen codebook version in memory (swapped atomically as a whole)."""

    version: str
    codebooks: CodebookSetLike

    def dim(self, modality: str) -> int | None:
        q = self.codebooks.codebooks.get(modality)
        return None if q is None else int(q.dim)

    def model_id(self, modality: str) -> str | None:
        """The encoder the codebook was fitted on (None: not recorded, accept any)."""
        ids = self.codebooks.manifest.get("encoder_model_ids") or {}
        return ids.get(modality) or None


Loader = Callable[[], tuple[ActiveCodebooks | None, ActiveCodebooks | None]]


class LiveCodebooks:
    """The live version and the pending one (a version being backfilled: new tracks are coded
    under it too, until it goes live), re-read through `loader` on `refresh()`."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader
        self.live: ActiveCodebooks | None = None
        self.pending: ActiveCodebooks | None = None
        self.refresh()

    def refresh(self) -> None:
        fresh, pending = self.loader()
        if fresh is not None and (self.live is None or fresh.version != self.live.version):
            log.info("codebook version %s is live (was %s)", fresh.version, self.live.version if self.live else None)
            self.live = fresh  # one reference swap: a batch sees either the old or the new version
        if (pending and pending.version) != (self.pending and self.pending.version):
            log.info("codebook version %s is being backfilled: coding new tracks under it too", pending and pending.version)
        self.pending = None if pending is None or fresh is None or pending.version == fresh.version else pending


def registry_codebook_loader(registry_dir: Path) -> Loader:
    """Loads the registry's LIVE and PENDING codebook versions, re-reading only when a pointer changes."""
    registry = Registry(registry_dir)
    cache: dict[str, ActiveCodebooks] = {}

    def one(av: Any) -> ActiveCodebooks | None:
        if av is None:
            return None
        if av.version not in cache:
            cache[av.version] = ActiveCodebooks(av.version, load_codebook_set(av.path))
        return cache[av.version]

    def load() -> tuple[ActiveCodebooks | None, ActiveCodebooks | None]:
        live, pending = registry.live("codebooks"), registry.pending("codebooks")
        for stale in set(cache) - {v.version for v in (live, pending) if v is not None}:
            del cache[stale]
        return one(live), one(pending)

    return load
