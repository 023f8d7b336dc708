"""Last.fm-2k restricted to the artists that have audio, with a text and an audio modality.

The audio folder (`settings.lastfm_audio_dir`, SIDSTREAM_LASTFM_AUDIO_DIR; default
../shared/data/lastfm-2k-audio) holds pre-computed embeddings of about five songs per artist,
averaged (its SOURCE.md): `vggish.npy` (128-d), `whisper.npy` (512-d) and `items.tsv`
(`row` -> hetrec `artistID`). It is read from its path, never copied into the project.

The data set is `trainer.lastfm_convert.convert_lastfm` with its items restricted to the artists
that have audio (and a name and a tag, as there): the same positives, popularity-matched
negatives (drawn among those artists), time placement, split and cold rule
(docs/evaluation.md). It carries `embeddings/text.npy` (the shared text encoder) and
`embeddings/audio.npy` (the chosen encoder's vectors), and `dataset.json` records the encoder.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.dataset import Dataset, DatasetContractError
from trainer.embeddings import TextEncoding
from trainer.lastfm_convert import convert_lastfm, embed_items

log = logging.getLogger(__name__)

AUDIO_ENCODERS = {"vggish": "vggish.npy", "whisper": "whisper.npy"}
AUDIO_DIR_SETTING = "SIDSTREAM_LASTFM_AUDIO_DIR"


def resolve_audio_dir(given: Path | None, configured: Path | None) -> Path:
    """The audio folder: `given`, else the configured/default one; a one-line error naming the setting."""
    folder = given or configured
    if folder is None:
        raise DatasetContractError(f"no Last.fm-2k audio folder: set {AUDIO_DIR_SETTING} (settings.lastfm_audio_dir) "
                                   "or pass --audio DIR (default ../shared/data/lastfm-2k-audio, not present)")
    if not (folder / "items.tsv").is_file():
        raise DatasetContractError(f"{folder} is not a Last.fm-2k audio folder (no items.tsv); set {AUDIO_DIR_SETTING}")
    return folder


def read_audio(folder: Path, encoder: str) -> tuple[np.ndarray, np.ndarray]:
    """(hetrec artist ids int64 [n], float32 [n, d]) of one encoder's embeddings."""
    if encoder not in AUDIO_ENCODERS:
        raise DatasetContractError(f"unknown audio encoder {encoder!r}; expected one of {', '.join(AUDIO_ENCODERS)}")
    table = pd.read_csv(folder / "items.tsv", sep="\t")
    if not {"row", "artistID"} <= set(table.columns):
        raise DatasetContractError(f"{folder / 'items.tsv'}: need columns row, artistID")
    X = np.load(folder / AUDIO_ENCODERS[encoder]).astype(np.float32)
    rows = table["row"].to_numpy(np.int64)
    if X.ndim != 2 or rows.max(initial=-1) >= X.shape[0] or rows.min(initial=0) < 0:
        raise DatasetContractError(f"{folder / AUDIO_ENCODERS[encoder]}: shape {X.shape} does not cover items.tsv's rows")
    ids = table["artistID"].to_numpy(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise DatasetContractError(f"{folder / 'items.tsv'}: an artistID appears twice")
    return ids, X[rows]


def convert_lastfm_audio(src: Path, audio_dir: Path, encoder: str = "vggish", text: TextEncoding | None = None,
                         neg_per_pos: int = 1, seed: int = 0, embed_text: bool = True) -> Dataset:
    """The audio subset of Last.fm-2k with `embeddings/audio.npy` from `encoder` (and text
    embeddings unless `embed_text` is False)."""
    artist_ids, A = read_audio(audio_dir, encoder)
    ds = convert_lastfm(src, neg_per_pos=neg_per_pos, seed=seed, keep_artists=artist_ids.tolist())
    if embed_text:
        ds = embed_items(ds, text)
    else:
        ds.embeddings, ds.embedding_ids = {}, ds.items["item_id"].tolist()
    row = pd.Series(np.arange(len(artist_ids)), index=pd.Index([f"lastfm:{a}" for a in artist_ids]))
    ds.embeddings["audio"] = A[row.reindex(ds.embedding_ids).to_numpy(np.int64)]
    h = hashlib.sha256((audio_dir / AUDIO_ENCODERS[encoder]).read_bytes()).hexdigest()[:16]
    dropped = ds.info.pop("plays_dropped_untagged_artist")
    ds.info.update({
        "plays_dropped_no_audio_or_untagged": dropped,
        "name": f"lastfm-2k-audio-{encoder}",
        "audio_encoder": encoder,
        "audio_model_id": f"{encoder}@lastfm-2k-audio:{h}",
        "audio_dim": int(A.shape[1]),
        "audio_artists": int(len(artist_ids)),
        "audio_artists_kept": int(len(ds.items)),
        "audio_artists_dropped_no_name_or_tag": int(len(artist_ids) - len(ds.items)),
        "audio_source": "Spillo et al., 'See the Movie, Hear the Song, Read the Book' (lastfm-2k-audio/SOURCE.md); "
                        "evaluation only",
    })
    log.info("lastfm-2k audio subset (%s): %d items, %d positives, %d negatives", encoder, len(ds.items),
             ds.info["positives"], ds.info["negatives"])
    return ds
