"""python -m encoders.musicnn.convert [VARIANT ...]: regenerate the shipped safetensors files
from the pinned musicnn wheel (fetched with pip into ~/.cache/sidstream/musicnn, sha256-checked)."""

from __future__ import annotations

import sys

from encoders.musicnn.weights import SHIPPED_DIR, convert_from_wheel, fetch_wheel, sha256_of


def main(argv: list[str] | None = None) -> None:
    variants = (argv if argv is not None else sys.argv[1:]) or ["MSD_musicnn"]
    wheel = fetch_wheel()
    for variant in variants:
        out = convert_from_wheel(wheel, variant, SHIPPED_DIR / f"{variant}.safetensors")
        out.chmod(0o644)
        print(f"{out} {out.stat().st_size} bytes sha256 {sha256_of(out)}")


if __name__ == "__main__":
    main()
