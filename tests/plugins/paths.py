"""Data the tests read from outside the repository (skipped or replaced where absent)."""

from __future__ import annotations

from pathlib import Path

SHARED_LASTFM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lastfm-2k"
AUDIO_DIR = Path("/usr/share/games/singularity/music")
