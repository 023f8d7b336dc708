"""Item content embeddings per modality, aligned to a list of item ids.

Embeddings come from the dataset's embeddings/ folder when present; text embeddings are
otherwise computed with the shared text encoder and cached on disk (never in the repo), as the
caller's TextEncoding says (the app layer builds it from its settings: TextEncoding.from_settings).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sidcore.config import EncoderSettings, Settings
from trainer.dataset import Dataset, item_texts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextEncoding:
    """How item texts become embeddings: the embeddings cache and the text encoder's settings."""

    cache_dir: Path
    encoders: EncoderSettings

    @classmethod
    def from_settings(cls, settings: Settings) -> TextEncoding:
        return cls(settings.cache_dir, settings.encoders)

    @property
    def model_id(self) -> str:
        """The text encoder's model id (what the text worker tags its embeddings with)."""
        from encoders.text import text_model_id

        return text_model_id(self.encoders.text_model_dir)


def text_embeddings(items: pd.DataFrame, text: TextEncoding) -> np.ndarray:
    """Text embeddings float32 [n_items, d] of the items' texts, through the embeddings cache."""
    from encoders.catalog import embed_texts_cached
    from encoders.configured import configured_text_encoder

    return embed_texts_cached(text.cache_dir, configured_text_encoder(text.encoders), item_texts(items))


def item_embeddings(
    ds: Dataset, item_ids: list[str], modalities: list[str] | None = None, *, text: TextEncoding | None
) -> dict[str, np.ndarray]:
    """{modality: float32 [len(item_ids), d]} with NaN rows for items without that modality.
    Items with text but no text embeddings are embedded with `text` (ValueError when None)."""
    wanted = modalities or ds.modalities
    out: dict[str, np.ndarray] = {}
    for modality in wanted:
        if modality in ds.embeddings:
            X, ids = ds.embeddings[modality], ds.embedding_ids
        elif modality == "text" and not ds.items.empty:
            if text is None:
                raise ValueError("the data set's items have text but no text embeddings, and no TextEncoding was given")
            X, ids = text_embeddings(ds.items, text), ds.items["item_id"].tolist()
        else:
            log.info("no %s embeddings in the data set; the modality is left out", modality)
            continue
        row = pd.Series(np.arange(len(ids)), index=pd.Index(ids)).reindex(item_ids).to_numpy()
        aligned = np.full((len(item_ids), X.shape[1]), np.nan, dtype=np.float32)
        have = ~np.isnan(row)
        aligned[have] = X[row[have].astype(np.int64)]
        out[modality] = aligned
    return out
