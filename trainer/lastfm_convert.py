"""Convert HetRec 2011 Last.fm-2k into the dataset contract (docs/evaluation.md, "Last.fm-2k").

The choices, fixed here and documented in docs/evaluation.md:

- items: artists with a name and at least one tag (12,133); text "<name>. Tags: t1, ..." (top 5 tags).
- positives: every (user, artist) listening pair on those artists (label 1). Play counts only
  say the artist is in the user's top 50, so every pair is a positive.
- time: the user's first tag date on that artist. Pairs the user never tagged (78%) get a time
  drawn uniformly at random (fixed seed) inside the user's tagging span [first, last tag date];
  tag dates before 2005 (5 rows, clearly wrong) are ignored.
- negatives: `neg_per_pos` per positive, artists the user never played, drawn in proportion to
  their number of listeners (so that popularity alone does not separate the classes), with the
  positive's timestamp (the same "impression time").
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from sidcore.datasets.lastfm import artist_items, item_text, read_plays, read_tag_assignments
from trainer.dataset import Dataset
from trainer.embeddings import TextEncoding, text_embeddings

log = logging.getLogger(__name__)

MIN_VALID_MS = 1_104_537_600_000  # 2005-01-01 UTC: earlier tag dates are data errors
CONVERTER_VERSION = 1


def place_in_time(plays: pd.DataFrame, tags: pd.DataFrame, seed: int) -> np.ndarray:
    """Timestamp (ms) per (user, artist) pair: first own tag date, else uniform in the user's tag span."""
    valid = tags[tags["timestamp"] >= MIN_VALID_MS]
    first = valid.groupby(["user_id", "artist_id"])["timestamp"].min().rename("first_tag")
    span = valid.groupby("user_id")["timestamp"].agg(span_lo="min", span_hi="max")
    df = plays[["user_id", "artist_id"]].merge(first.reset_index(), on=["user_id", "artist_id"], how="left")
    df = df.merge(span.reset_index(), on="user_id", how="left")
    # a user with no valid tag date at all: the whole data set's span
    df["span_lo"] = df["span_lo"].fillna(valid["timestamp"].min())
    df["span_hi"] = df["span_hi"].fillna(valid["timestamp"].max())
    u = np.random.default_rng(seed).random(len(df))
    drawn = df["span_lo"].to_numpy() + u * (df["span_hi"].to_numpy() - df["span_lo"].to_numpy())
    ts = np.where(df["first_tag"].notna(), df["first_tag"].to_numpy(), drawn)
    return np.round(ts).astype(np.int64)


def sample_negatives(
    users: np.ndarray, played: set[tuple[int, int]], items: np.ndarray, weights: np.ndarray, seed: int, rounds: int = 20
) -> np.ndarray:
    """One item per entry of `users`, drawn by `weights`, never an item the user played (-1 if none found)."""
    rng = np.random.default_rng(seed)
    p = weights / weights.sum()
    out = np.full(len(users), -1, dtype=np.int64)
    todo = np.arange(len(users))
    for _ in range(rounds):
        if todo.size == 0:
            break
        draw = items[rng.choice(len(items), size=todo.size, p=p)]
        ok = np.fromiter(((int(users[i]), int(d)) not in played for i, d in zip(todo, draw, strict=True)), bool, todo.size)
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out


def convert_lastfm(src: Path, neg_per_pos: int = 1, seed: int = 0, top_tags: int = 5,
                   keep_artists: Collection[int] | None = None) -> Dataset:
    """Build the Last.fm-2k dataset (no embeddings; see `embed_items`). `keep_artists`: restrict
    the items (hence positives and negatives) to these artist ids (the audio subset,
    trainer.lastfm_audio); the protocol is otherwise the same."""
    artists = artist_items(src, top_tags)
    artists["artist_id"] = artists["item_id"].str.removeprefix("lastfm:").astype("int64")
    if keep_artists is not None:
        artists = artists[artists["artist_id"].isin(list(keep_artists))].reset_index(drop=True)
    plays_all = read_plays(src)
    plays = plays_all[plays_all["artist_id"].isin(artists["artist_id"])].reset_index(drop=True)
    tags = read_tag_assignments(src)
    ts = place_in_time(plays, tags, seed)
    own_time = plays.merge(
        tags[tags["timestamp"] >= MIN_VALID_MS][["user_id", "artist_id"]].drop_duplicates(), how="left", indicator=True
    )["_merge"].eq("both")

    listeners = plays.groupby("artist_id").size()
    played = set(zip(plays["user_id"].tolist(), plays["artist_id"].tolist(), strict=True))
    pos_users = np.repeat(plays["user_id"].to_numpy(), neg_per_pos)
    neg_items = sample_negatives(pos_users, played, listeners.index.to_numpy(), listeners.to_numpy(np.float64), seed + 1)
    neg_ts = np.repeat(ts, neg_per_pos)
    keep = neg_items >= 0

    pos = pd.DataFrame({"user_id": plays["user_id"], "artist_id": plays["artist_id"], "timestamp": ts, "label": 1})
    neg = pd.DataFrame({"user_id": pos_users[keep], "artist_id": neg_items[keep], "timestamp": neg_ts[keep], "label": 0})
    inter = pd.concat([pos, neg], ignore_index=True)
    inter = inter.sort_values(["timestamp", "user_id", "label"], ascending=[True, True, False], kind="stable")
    interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype(str).to_numpy(),
            "item_id": ("lastfm:" + inter["artist_id"].astype(str)).to_numpy(),
            "timestamp": inter["timestamp"].astype("int64").to_numpy(),
            "label": inter["label"].astype("int8").to_numpy(),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": artists["item_id"],
            "name": artists["name"],
            "tags": artists["tags"],
            "text": [item_text(n, list(t)) for n, t in zip(artists["name"], artists["tags"], strict=True)],
        }
    )
    info = {
        "name": "lastfm-2k",
        "converter_version": CONVERTER_VERSION,
        "source": "HetRec 2011 Last.fm-2k (non-commercial use; cite http://www.lastfm.com)",
        "seed": seed,
        "neg_per_pos": neg_per_pos,
        "top_tags": top_tags,
        "positives": int(len(pos)),
        "positives_with_own_tag_time": int(own_time.sum()),
        "negatives": int(keep.sum()),
        "plays_dropped_untagged_artist": int(len(plays_all) - len(plays)),
        "items": int(len(items)),
        "users": int(plays["user_id"].nunique()),
        "choices": __doc__.split("The choices, fixed here and documented in docs/evaluation.md:")[1].strip(),
    }
    log.info("lastfm-2k: %d positives (%d with own tag time), %d negatives, %d items",
             info["positives"], info["positives_with_own_tag_time"], info["negatives"], info["items"])
    return Dataset(interactions, items, info=info)


def embed_items(ds: Dataset, text: TextEncoding) -> Dataset:
    """Add text embeddings of every item (`text`: the encoder's settings and the embeddings cache)."""
    ds.embeddings = {"text": text_embeddings(ds.items, text)}
    ds.embedding_ids = ds.items["item_id"].tolist()
    return ds
