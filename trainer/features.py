"""From interactions to model inputs: histories, the time split, the ID vocabulary, SID lookups.

Everything is vectorised numpy; a `Samples` object is a set of rows, and `batches` turns rows
into the dict of tensors the models take:

    item [B], hist_item [B, T], hist_mask [B, T]       ID-table rows (0 = history padding)
    codes:<codebook> [B, L], hist_codes:<codebook> [B, T, L]   SIDs (-1 = item has none)
    label [B] float
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

HISTORY_LEN = 20  # method.md §3: last 20 positive items before the target


@dataclass
class Samples:
    """Rows over a catalog of items: index arrays into `catalog`, users, labels, histories."""

    users: np.ndarray  # str [N]
    items: np.ndarray  # int64 [N], index into catalog
    labels: np.ndarray  # float32 [N]
    timestamps: np.ndarray  # int64 [N]
    history: np.ndarray  # int64 [N, T], index into catalog, -1 = padding

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def take(self, rows: np.ndarray) -> Samples:
        return Samples(self.users[rows], self.items[rows], self.labels[rows], self.timestamps[rows], self.history[rows])


def build_samples(interactions: pd.DataFrame, catalog: list[str], history_len: int = HISTORY_LEN) -> Samples:
    """Every row with the user's last `history_len` positives strictly before its timestamp."""
    index = pd.Series(np.arange(len(catalog)), index=pd.Index(catalog))
    items = index.reindex(interactions["item_id"].to_numpy()).to_numpy()
    if np.isnan(items).any():
        raise ValueError("interactions name items outside the catalog")
    items = items.astype(np.int64)
    users = interactions["user_id"].to_numpy().astype(str)
    ts = interactions["timestamp"].to_numpy(np.int64)
    labels = interactions["label"].to_numpy(np.float32)

    user_code = pd.factorize(users)[0].astype(np.int64)
    ts_rank = pd.factorize(np.sort(np.unique(ts)))[0]  # dense rank of each distinct time
    rank_of = pd.Series(ts_rank, index=np.sort(np.unique(ts)))
    t_rank = rank_of.reindex(ts).to_numpy().astype(np.int64)
    span = int(t_rank.max()) + 2 if len(t_rank) else 1
    key = user_code * span + t_rank

    pos = labels > 0.5
    order = np.lexsort((t_rank[pos], user_code[pos]))  # positives by (user, time); stable within ties
    pos_keys = key[pos][order]
    pos_items = items[pos][order]
    end = np.searchsorted(pos_keys, key, side="left")  # positives of this user strictly before t
    start = np.searchsorted(pos_keys, user_code * span, side="left")
    offsets = np.arange(-history_len, 0, dtype=np.int64)
    idx = end[:, None] + offsets[None, :]  # oldest .. newest
    valid = idx >= start[:, None]
    history = np.where(valid, pos_items[np.clip(idx, 0, max(len(pos_items) - 1, 0))] if len(pos_items) else -1, -1)
    return Samples(users, items, labels, ts, history.astype(np.int64))


def time_split(samples: Samples, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows before / after a global time cutoff so that about `test_fraction` of rows are test.

    Returns (train rows, test rows, cutoff ms); test = timestamp > cutoff.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    cutoff = int(np.quantile(samples.timestamps, 1 - test_fraction, method="lower"))
    test = samples.timestamps > cutoff
    return np.flatnonzero(~test), np.flatnonzero(test), cutoff


def stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


@dataclass
class IdVocab:
    """Item ID rows: 0 = padding, 1..V = items seen in training, V+1.. = hashed rows for unseen ids."""

    item_ids: list[str]
    oov_buckets: int = 1024

    def __post_init__(self) -> None:
        self._row = {item: i + 1 for i, item in enumerate(self.item_ids)}

    @property
    def n_rows(self) -> int:
        return len(self.item_ids) + 1 + self.oov_buckets

    def rows(self, item_ids: list[str]) -> np.ndarray:
        base = len(self.item_ids) + 1
        return np.fromiter(
            (self._row.get(i, base + stable_hash(i) % self.oov_buckets) for i in item_ids), np.int64, len(item_ids)
        )


@dataclass
class Lookup:
    """Per catalog item: its ID-table row and its SIDs per codebook (-1 rows = no SID)."""

    id_rows: np.ndarray  # int64 [n_catalog]
    codes: dict[str, np.ndarray]  # codebook -> int64 [n_catalog, L]

    def batch(self, s: Samples, rows: np.ndarray) -> dict[str, torch.Tensor]:
        items = s.items[rows]
        hist = s.history[rows]
        mask = hist >= 0
        hist_c = np.where(mask, hist, 0)
        out = {
            "item": torch.from_numpy(self.id_rows[items]),
            "hist_item": torch.from_numpy(np.where(mask, self.id_rows[hist_c], 0)),
            "hist_mask": torch.from_numpy(mask),
            "label": torch.from_numpy(s.labels[rows]),
        }
        for name, codes in self.codes.items():
            out[f"codes:{name}"] = torch.from_numpy(codes[items])
            out[f"hist_codes:{name}"] = torch.from_numpy(np.where(mask[..., None], codes[hist_c], -1))
        return out


def batches(
    s: Samples, lookup: Lookup, batch_size: int, shuffle_seed: int | None = None, start: int = 0,
    rank: int = 0, world_size: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Mini-batches (shuffled by `shuffle_seed`), from batch number `start`; with DDP each rank
    takes every `world_size`-th row of each global batch of `batch_size * world_size` rows."""
    order = np.arange(len(s)) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(len(s))
    step = batch_size * world_size
    for b in range(start, (len(s) + step - 1) // step):
        rows = order[b * step : (b + 1) * step][rank::world_size]
        if rows.size:
            yield lookup.batch(s, rows)


def n_batches(n_rows: int, batch_size: int, world_size: int = 1) -> int:
    step = batch_size * world_size
    return (n_rows + step - 1) // step
