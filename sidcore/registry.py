"""Artifact registry: versioned, immutable artifact directories with manifests.

Layout: ``<root>/<kind>/<version>/`` (kind = "codebooks" | "ranker"), each holding a
``registry.json`` (the registry's record: what `write` returned, plus version, kind,
created_at) beside the artifact's own files (a ``manifest.json`` of the artifact is left as
the artifact wrote it; if it wrote none, the record is also written as ``manifest.json``), plus ``<root>/<kind>/LIVE`` naming the live version. A version is
written to a temporary directory and renamed into place, so a crash never leaves a
half-written version and a live version is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD = "registry.json"


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class ArtifactVersion:
    kind: str
    version: str
    path: Path

    @property
    def manifest(self) -> dict[str, Any]:
        """The registry's record of this version."""
        return json.loads((self.path / RECORD).read_text())


def new_version_id() -> str:
    """Sortable, unique version id: UTC time to the millisecond plus a short random suffix."""
    ms = int(time.time() * 1000)
    return time.strftime("v%Y%m%dT%H%M%S", time.gmtime(ms / 1000)) + f"{ms % 1000:03d}-{os.urandom(2).hex()}"


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _kind_dir(self, kind: str) -> Path:
        d = self.root / kind
        d.mkdir(parents=True, exist_ok=True)
        return d

    def register(
        self, kind: str, write: Callable[[Path], dict[str, Any]], version: str | None = None
    ) -> ArtifactVersion:
        """Create a new version: `write(tmpdir)` fills the directory and returns its manifest."""
        version = version or new_version_id()
        final = self._kind_dir(kind) / version
        if final.exists():
            raise RegistryError(f"{kind}/{version} already exists; versions are immutable")
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self._kind_dir(kind)))
        try:
            manifest = write(tmp)
            manifest = {**manifest, "version": version, "kind": kind}
            manifest.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
            (tmp / RECORD).write_text(text)
            if not (tmp / "manifest.json").exists():
                (tmp / "manifest.json").write_text(text)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ArtifactVersion(kind, version, final)

    def versions(self, kind: str) -> list[ArtifactVersion]:
        d = self._kind_dir(kind)
        return [
            ArtifactVersion(kind, p.name, p)
            for p in sorted(d.iterdir())
            if p.is_dir() and not p.name.startswith(".") and (p / RECORD).is_file()
        ]

    def get(self, kind: str, version: str) -> ArtifactVersion:
        path = self._kind_dir(kind) / version
        if not (path / RECORD).is_file():
            raise RegistryError(f"no {kind} version {version!r} in {self.root}")
        return ArtifactVersion(kind, version, path)

    def live(self, kind: str) -> ArtifactVersion | None:
        pointer = self._kind_dir(kind) / "LIVE"
        if not pointer.is_file():
            return None
        return self.get(kind, pointer.read_text().strip())

    def pending(self, kind: str) -> ArtifactVersion | None:
        """The version being backfilled before it goes live (assigners code under both)."""
        pointer = self._kind_dir(kind) / "PENDING"
        if not pointer.is_file():
            return None
        return self.get(kind, pointer.read_text().strip())

    def set_pending(self, kind: str, version: str | None) -> None:
        """Name the version being backfilled (None: no backfill in progress)."""
        pointer = self._kind_dir(kind) / "PENDING"
        if version is None:
            pointer.unlink(missing_ok=True)
            return
        self.get(kind, version)
        tmp = pointer.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(version + "\n")
        os.replace(tmp, pointer)

    def log_event(self, kind: str, event: dict[str, Any]) -> dict[str, Any]:
        """Append to <kind>/EVENTS.jsonl (promotions, refusals, backfills); returns the event
        with its sequence number `seq` and time."""
        path = self._kind_dir(kind) / "EVENTS.jsonl"
        seq = len(self.events(kind)) + 1
        event = {"seq": seq, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True, default=str) + "\n")
        return event

    def events(self, kind: str) -> list[dict[str, Any]]:
        path = self._kind_dir(kind) / "EVENTS.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def promote(self, kind: str, version: str) -> ArtifactVersion:
        """Make `version` live (atomic pointer swap)."""
        av = self.get(kind, version)
        pointer = self._kind_dir(kind) / "LIVE"
        tmp = pointer.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(version + "\n")
        os.replace(tmp, pointer)
        with open(self._kind_dir(kind) / "LIVE_HISTORY", "a", encoding="utf-8") as f:
            f.write(version + "\n")
        return av

    def live_history(self, kind: str) -> list[str]:
        """Versions in the order they went live (the last is live); a registry from before this
        history was kept starts it at the live version."""
        path = self._kind_dir(kind) / "LIVE_HISTORY"
        history = [v for v in path.read_text(encoding="utf-8").split()] if path.is_file() else []
        live = self.live(kind)
        if live is not None and (not history or history[-1] != live.version):
            history.append(live.version)
        return history

    def clean_incomplete(self, kind: str) -> int:
        """Remove temporary directories left by a crashed writer; returns how many."""
        n = 0
        for p in self._kind_dir(kind).iterdir():
            if p.is_dir() and p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        return n
