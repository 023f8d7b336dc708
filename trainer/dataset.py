"""The dataset contract every trainer job reads, and the offline store's interaction logs.

A dataset is a folder::

    interactions.csv          user_id,item_id,timestamp[,label]   (timestamp: int64 ms; label 0/1,
                                                                    absent = every row positive)
    items.jsonl               one object per item: item_id, text or metadata fields
                              (name, title, artist, tags, ...), optional audio_path
    embeddings/<modality>.npy optional float32 [n, d] per modality (text, audio)
    embeddings/ids.txt        the item_id of each embedding row, one per line
    dataset.json              optional: name, description, how it was built, and
                              encoder_model_ids {modality: model id}: the encoder each
                              embeddings/<modality>.npy came from (a codebook fitted on it
                              records it, and the live assigner refuses other model ids)

The streaming side's offline store is a folder of Parquet files with columns user_id, item_id,
timestamp (int64 ms) and label (int8); `read_interaction_logs` reads it into the same frame.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

INTERACTIONS = "interactions.csv"
ITEMS = "items.jsonl"
EMBEDDINGS = "embeddings"
DATASET_INFO = "dataset.json"
ENCODER_MODEL_IDS = "encoder_model_ids"  # dataset.json: {modality: model id} of embeddings/<modality>.npy
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "label")


class DatasetContractError(ValueError):
    """A folder or log that does not follow the dataset contract; the message says what is wrong."""


@dataclass
class Dataset:
    """Interactions (user_id, item_id, timestamp, label), items, and optional item embeddings."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    embedding_ids: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None

    @property
    def modalities(self) -> list[str]:
        """Modalities with item embeddings, plus "text" when items carry text but no text embedding."""
        mods = set(self.embeddings)
        if "text" not in mods and not self.items.empty:
            mods.add("text")
        return sorted(mods)

    def fingerprint(self) -> str:
        return data_fingerprint(self.interactions, self.items)

    @property
    def encoder_model_ids(self) -> dict[str, str]:
        """{modality: model id} from dataset.json's `encoder_model_ids` ({} when absent: the
        codebooks fitted on it accept embeddings of any model id, as before)."""
        return dict(self.info.get(ENCODER_MODEL_IDS) or {})


def check_encoder_model_ids(info: dict[str, Any], modalities: set[str], source: str) -> None:
    """dataset.json's `encoder_model_ids`, if any, is {modality: non-empty model id} naming only
    modalities with an embeddings/<modality>.npy (a model id for embeddings the folder does not
    hold would be recorded for vectors a job computed with its own encoder)."""
    ids = info.get(ENCODER_MODEL_IDS)
    if ids is None:
        return
    if not isinstance(ids, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in ids.items()):
        raise DatasetContractError(f"{source}: {ENCODER_MODEL_IDS} must map each modality to a non-empty model id string, "
                                   f"got {ids!r}")
    stray = sorted(set(ids) - modalities)
    if stray:
        raise DatasetContractError(f"{source}: {ENCODER_MODEL_IDS} names {', '.join(stray)} but there is no "
                                   f"{EMBEDDINGS}/<modality>.npy for it (arrays: {', '.join(sorted(modalities)) or 'none'})")


def normalise_interactions(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check and coerce an interactions frame to the contract's dtypes; drops exact duplicates."""
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in df.columns]
    if missing:
        raise DatasetContractError(f"{source}: missing column(s) {missing}; need user_id,item_id,timestamp[,label]")
    out = pd.DataFrame(
        {
            "user_id": df["user_id"].astype(str),
            "item_id": df["item_id"].astype(str),
            "timestamp": pd.to_numeric(df["timestamp"], errors="coerce"),
            "label": pd.to_numeric(df["label"], errors="coerce") if "label" in df.columns else 1,
        }
    )
    bad = out["timestamp"].isna() | out["label"].isna()
    if bad.any():
        raise DatasetContractError(f"{source}: {int(bad.sum())} row(s) with a non-numeric timestamp or label")
    if not out["label"].isin([0, 1]).all():
        raise DatasetContractError(f"{source}: label must be 0 or 1")
    out["timestamp"] = out["timestamp"].astype("int64")
    out["label"] = out["label"].astype("int8")
    # at-least-once delivery may log a record twice; an exact duplicate is one interaction
    return out.drop_duplicates(ignore_index=True)


def read_items(path: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return pd.DataFrame({"item_id": pd.Series([], dtype=str)})
    items = pd.DataFrame(rows)
    if "item_id" not in items.columns:
        raise DatasetContractError(f"{path}: every row needs an item_id")
    items["item_id"] = items["item_id"].astype(str)
    return items.drop_duplicates("item_id", keep="last", ignore_index=True)


def item_texts(items: pd.DataFrame) -> list[str]:
    """The text of each item: its `text` field, else the project's metadata template."""
    from sidcore.datasets.lastfm import item_text

    texts = []
    for row in items.to_dict("records"):
        text = row.get("text")
        if isinstance(text, str) and text.strip():
            texts.append(text)
            continue
        name = row.get("name") or row.get("title") or row.get("item_id")
        tags = row.get("tags")
        texts.append(item_text(str(name), list(tags) if isinstance(tags, list) else []))
    return texts


def load_dataset(root: str | Path) -> Dataset:
    """Read a dataset folder (see the module docstring)."""
    root = Path(root)
    if not (root / INTERACTIONS).is_file():
        raise DatasetContractError(f"{root} has no {INTERACTIONS} (is it a dataset folder?)")
    interactions = normalise_interactions(pd.read_csv(root / INTERACTIONS, dtype={"user_id": str, "item_id": str}), str(root / INTERACTIONS))
    items = read_items(root / ITEMS) if (root / ITEMS).is_file() else pd.DataFrame({"item_id": pd.Series([], dtype=str)})
    embeddings: dict[str, np.ndarray] = {}
    ids: list[str] = []
    emb_dir = root / EMBEDDINGS
    if emb_dir.is_dir():
        ids_path = emb_dir / "ids.txt"
        if not ids_path.is_file():
            raise DatasetContractError(f"{emb_dir} has embeddings but no ids.txt")
        ids = ids_path.read_text(encoding="utf-8").split("\n")
        ids = [i for i in ids if i]
        for npy in sorted(emb_dir.glob("*.npy")):
            X = np.load(npy).astype(np.float32, copy=False)
            if X.ndim != 2 or X.shape[0] != len(ids):
                raise DatasetContractError(f"{npy}: shape {X.shape} does not match {len(ids)} ids")
            embeddings[npy.stem] = X
    info = json.loads((root / DATASET_INFO).read_text()) if (root / DATASET_INFO).is_file() else {}
    check_encoder_model_ids(info, set(embeddings), str(root / DATASET_INFO))
    return Dataset(interactions, items, embeddings, ids, info, root)


def write_dataset(root: str | Path, ds: Dataset) -> None:
    """Write a dataset folder (overwrites the folder's contract files)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ds.interactions[list(INTERACTION_COLUMNS)].to_csv(root / INTERACTIONS, index=False)
    with (root / ITEMS).open("w", encoding="utf-8") as fh:
        for row in ds.items.to_dict("records"):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    if ds.embeddings:
        (root / EMBEDDINGS).mkdir(exist_ok=True)
        (root / EMBEDDINGS / "ids.txt").write_text("\n".join(ds.embedding_ids) + "\n", encoding="utf-8")
        for modality, X in ds.embeddings.items():
            np.save(root / EMBEDDINGS / f"{modality}.npy", np.asarray(X, dtype=np.float32))
    if ds.info:
        (root / DATASET_INFO).write_text(json.dumps(ds.info, indent=2, sort_keys=True) + "\n")


def read_interaction_logs(path: str | Path, since_ms: int | None = None) -> pd.DataFrame:
    """Interactions from the offline store: one Parquet file, or every *.parquet under a folder.

    `since_ms`: only rows with timestamp >= it, the filter pushed down into the Parquet scan
    (pyarrow dataset: row groups whose statistics lie before the window are not read, and rows
    outside it never reach pandas), so a job's memory follows its window, not the whole log."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet")) if path.is_dir() else []
    if not files:
        raise DatasetContractError(f"no Parquet interaction logs at {path}")
    if since_ms is None:
        frames = [pd.read_parquet(f, columns=None) for f in files]
        return normalise_interactions(pd.concat(frames, ignore_index=True), str(path))
    import pyarrow.dataset as pads

    scan = pads.dataset([str(f) for f in files], format="parquet")
    if "timestamp" not in scan.schema.names:
        raise DatasetContractError(f"{path}: no timestamp column to window on")
    table = scan.to_table(filter=pads.field("timestamp") >= int(since_ms))
    return normalise_interactions(table.to_pandas(), str(path))


def data_fingerprint(interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> str:
    """sha256 (16 hex) of the interactions (order-independent) and item ids: names the training data."""
    h = hashlib.sha256()
    rows = pd.util.hash_pandas_object(interactions[list(INTERACTION_COLUMNS)], index=False).to_numpy()
    h.update(np.sort(rows).tobytes())
    if items is not None and "item_id" in items.columns:
        h.update("\n".join(sorted(items["item_id"].astype(str))).encode())
    return h.hexdigest()[:16]
