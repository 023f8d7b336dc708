"""What a generated table depends on: source files, settings, data; and where it was made."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path


def source_fingerprint(root: Path, patterns: tuple[str, ...], extra: str = "") -> tuple[str, int]:
    """sha256 over the matched files' paths and contents (sorted), plus `extra`; (hash[:16], files).

    Content only: no commit history, mtimes or untracked caches, so a shallow clone or an edit to
    an unrelated file gives the same fingerprint."""
    files = sorted({p for pattern in patterns for p in root.glob(pattern)
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"})
    if not files:
        raise FileNotFoundError(f"no source files match {patterns} under {root}")
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    h.update(extra.encode())
    return h.hexdigest()[:16], len(files)


def tree_fingerprint(folder: Path, suffixes: tuple[str, ...] = (".dat", ".csv", ".tsv", ".parquet", ".npy")) -> str:
    """sha256 over a data folder's files with the given suffixes (names and contents)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes)
    if not files:
        raise FileNotFoundError(f"no data files ({', '.join(suffixes)}) under {folder}")
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def commit(root: Path) -> str:
    """The checkout's commit (short), with '+dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """One line: CPU model, core count, memory, GPU if torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, {gpu}, Python {platform.python_version()}"
