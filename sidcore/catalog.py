"""The demo catalog: Last.fm artists (text) and real recordings (audio) as tracks.
Shared by `sidstream demo`, `sidstream bench pipeline` and the tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidcore.datasets.lastfm import item_text, load_items

AUDIO_SUFFIXES = (".ogg", ".wav", ".flac", ".mp3")


@dataclass(frozen=True)
class Track:
    track_id: str
    title: str | None
    artist: str | None
    album: str | None
    tags: tuple[str, ...]
    audio_path: Path | None = None
    preset_text: str | None = None  # sent as the record's `text`, overriding the template

    def metadata(self) -> dict[str, Any]:
        return {"title": self.title, "artist": self.artist, "album": self.album, "tags": list(self.tags), "text": self.preset_text}


def lastfm_tracks(folder: Path | None, limit: int | None = None) -> list[Track]:
    items = load_items(folder)
    if limit is not None:
        items = items.head(limit)
    # an artist's text is "<name>. Tags: t1, ..." throughout the project (docs: method.md §5)
    return [Track(r.item_id, None, r.name, None, tuple(r.tags), preset_text=item_text(r.name, list(r.tags))) for r in items.itertuples()]


def audio_tracks(folder: Path, limit: int | None = None) -> list[Track]:
    """Every audio file under `folder` (recursive, sorted) as a track with its file name as title."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    tracks = []
    for path in files[:limit]:
        slug = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-")
        tracks.append(Track(f"audio:{slug}", path.stem, None, None, ("game soundtrack",), path))
    return tracks
