"""Exit non-zero when an installed package's version differs from deploy/requirements.lock.

Every lock line whose environment marker holds here names a package; each one that is installed
must be at exactly the locked version (a locked package that nothing here needs, such as a CUDA
wheel on another platform, may be absent). Run by deploy/setup.sh after it installs.
    python deploy/check_lock.py [LOCK]
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def locked(path: Path) -> dict[str, str]:
    """name -> version of the lock's pins that apply to this interpreter and platform."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        spec = [s for s in req.specifier if s.operator == "=="]
        if len(spec) != 1:
            raise SystemExit(f"check_lock: {path}: not an exact pin: {raw!r}")
        pins[canonicalize_name(req.name)] = spec[0].version
    return pins


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("requirements.lock")
    pins = locked(path)
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = sorted(f"{n}: installed {installed[n]}, locked {v}" for n, v in pins.items()
                   if n in installed and installed[n] != v)
    present = sum(n in installed for n in pins)
    if wrong:
        print(f"check_lock: {len(wrong)} installed versions differ from {path}:", *wrong, sep="\n  ")
        return 1
    print(f"check_lock: {present} installed packages match {path.name} ({len(pins)} pins apply here)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
