"""Reader for HetRec 2011 Last.fm-2k (artists as items, tags as text).

The data set is read from a configurable folder (default ``../shared/data/lastfm-2k``);
a small derived sample ships in ``sidcore/data/sample`` for fresh clones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

# sha256 of the files as distributed (see ../shared/data/lastfm-2k/SOURCE.md)
SHA256 = {
    "artists.dat": "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648",
    "tags.dat": "c815d7216101fd0ba9b9c59fa2a011998d2fd076e0064d281ec4153d95ae8095",
    "user_artists.dat": "254272fa721c3935e8be286d28c051b206844307128698ab4eaa41d483379416",
    "user_taggedartists.dat": "c4a9ffae9ab47a9f9b2f0678ab1f7e5c1db4ca818837d8cddd1f5699c5bbf048",
    "user_friends.dat": "0360883a3557776e04fdebda851f2e5dd23e796cad7059b968acdebd528d13fa",
}

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "data" / "sample" / "lastfm_artists_sample.jsonl"


class DatasetError(RuntimeError):
    """The data set folder is missing, incomplete or corrupt."""


def verify(folder: Path) -> dict[str, str]:
    """Check every file's sha256; returns {file: digest}. Raises DatasetError on mismatch."""
    digests: dict[str, str] = {}
    for name, expected in SHA256.items():
        path = folder / name
        if not path.is_file():
            raise DatasetError(f"{path} is missing (expected the HetRec 2011 Last.fm-2k files)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise DatasetError(f"{path}: sha256 {digest} != {expected}")
        digests[name] = digest
    return digests


def read_artists(folder: Path) -> pd.DataFrame:
    path = folder / "artists.dat"
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    df = pd.read_csv(path, sep="\t", encoding="utf-8", usecols=["id", "name"], quoting=3)
    return df.rename(columns={"id": "artist_id"})


def read_tags(folder: Path) -> pd.DataFrame:
    df = pd.read_csv(folder / "tags.dat", sep="\t", encoding="latin-1", quoting=3)
    return df.rename(columns={"tagID": "tag_id", "tagValue": "tag"})


def read_tag_assignments(folder: Path) -> pd.DataFrame:
    """(user_id, artist_id, tag_id, timestamp ms at midnight UTC of the assignment date)."""
    df = pd.read_csv(folder / "user_taggedartists.dat", sep="\t")
    dates = pd.to_datetime(dict(year=df["year"], month=df["month"], day=df["day"]), errors="coerce", utc=True)
    out = pd.DataFrame(
        {
            "user_id": df["userID"].astype("int64"),
            "artist_id": df["artistID"].astype("int64"),
            "tag_id": df["tagID"].astype("int64"),
            "timestamp": dates.astype("int64") // 1_000_000,
        }
    )
    return out


def read_plays(folder: Path) -> pd.DataFrame:
    df = pd.read_csv(folder / "user_artists.dat", sep="\t")
    return df.rename(columns={"userID": "user_id", "artistID": "artist_id", "weight": "plays"})


def artist_items(folder: Path, top_tags: int = 5) -> pd.DataFrame:
    """Tagged artists as items: columns item_id (str), name, tags (list, most frequent first).

    Only artists that have a name and at least one tag are kept (12,133 in the full set).
    Ties in tag counts are broken by tag id so that the result is deterministic.
    """
    artists = read_artists(folder)
    tags = read_tags(folder)
    assignments = read_tag_assignments(folder)
    counts = assignments.groupby(["artist_id", "tag_id"]).size().rename("n").reset_index()
    counts = counts.merge(tags, on="tag_id", how="inner")
    counts = counts.sort_values(["artist_id", "n", "tag_id"], ascending=[True, False, True])
    top = counts.groupby("artist_id").head(top_tags)
    tag_lists = top.groupby("artist_id")["tag"].agg(list).rename("tags").reset_index()
    items = artists.merge(tag_lists, on="artist_id", how="inner").sort_values("artist_id")
    items["item_id"] = "lastfm:" + items["artist_id"].astype(str)
    return items[["item_id", "name", "tags"]].reset_index(drop=True)


def item_text(name: str, tags: list[str]) -> str:
    """The text used for an artist throughout the project: ``"<name>. Tags: t1, t2, ..."``."""
    return f"{name}. Tags: {', '.join(tags)}" if tags else name


def load_items(folder: Path | None, top_tags: int = 5) -> pd.DataFrame:
    """Items from the full data set in `folder`; None: the 600-artist sample shipped with sidcore.
    A folder that is not a Last.fm-2k copy is a DatasetError, never a quiet fall-back."""
    if folder is not None:
        if not (folder / "artists.dat").is_file():
            raise DatasetError(f"{folder} is not a Last.fm-2k folder (no artists.dat)")
        return artist_items(folder, top_tags)
    rows = [json.loads(line) for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines() if line]
    return pd.DataFrame(rows, columns=["item_id", "name", "tags"])
