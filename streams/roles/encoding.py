"""What the two encoder roles share: one model call per batch, items that make the model throw
found by bisection, and embeddings turned into Embedding records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from streams import avro_codec
from streams.event_time import TimePolicy, admit
from streams.records import BatchResult, DeadLetter, RawRecord, decode_or_dead, vector_to_bytes


class BatchEncoder(Protocol):
    model_id: str
    dim: int

    def encode(self, batch: Sequence[Any]) -> np.ndarray: ...


def encode_isolating(encoder: BatchEncoder, items: Sequence[Any]) -> tuple[np.ndarray | None, dict[int, str]]:
    """One encoder call for the batch; if it raises, bisect to find the items that make the
    model throw. Returns (vectors [n, d] with NaN rows for failed items, {index: reason})."""
    try:
        return np.asarray(encoder.encode(items), dtype=np.float32), {}
    except Exception as exc:  # noqa: BLE001 - any model error is narrowed down to its items
        if len(items) == 1:
            return None, {0: f"{type(exc).__name__}: {exc}"}
    half = len(items) // 2
    left, left_bad = encode_isolating(encoder, items[:half])
    right, right_bad = encode_isolating(encoder, items[half:])
    failed = {**left_bad, **{half + i: r for i, r in right_bad.items()}}
    parts = [v for v in (left, right) if v is not None]
    if not parts:
        return None, failed
    dim = parts[0].shape[1]
    out = np.full((len(items), dim), np.nan, dtype=np.float32)
    if left is not None:
        out[:half] = left
    if right is not None:
        out[half:] = right
    return out, failed


Prepared = tuple[Any, None] | tuple[None, tuple[str, str]]  # (the model's input, None) or (None, (error type, reason))


def encode_records(records: Sequence[RawRecord], schema: str, what: str, prepare: Callable[[dict[str, Any]], Prepared],
                   encoder: BatchEncoder, modality: str, policy: TimePolicy) -> BatchResult:
    """The encoder roles' batch: decode each record as `schema` (else an `undecodable` dead
    letter naming `what`), check its event time against `policy`, `prepare` the model's input
    from it (or a dead letter with the error type and reason it gives), then one encoder call
    for the batch (`encode_kept`)."""
    result = BatchResult()
    items: list[Any] = []
    kept: list[tuple[RawRecord, dict[str, Any]]] = []
    for raw in records:
        rec = decode_or_dead(raw, schema, what, result.dead)
        if rec is None or not admit(raw, rec, policy, result.dead):
            continue
        item, problem = prepare(rec)
        if problem is not None:
            error_type, reason = problem
            result.dead.append(DeadLetter(raw, f"track {rec['track_id']}: {reason}", error_type, rec["track_id"]))
            continue
        items.append(item)
        kept.append((raw, rec))
    if items:
        encode_kept(result, kept, items, encoder, modality)
    return result


def encode_kept(
    result: BatchResult, kept: list[tuple[RawRecord, dict[str, Any]]], items: list[Any], encoder: BatchEncoder, modality: str
) -> None:
    """Encode `items` (one per kept record) into `result`: outputs, or dead letters naming the failure."""
    vectors, failed = encode_isolating(encoder, items)
    for i, reason in failed.items():
        raw, rec = kept[i]
        result.dead.append(DeadLetter(raw, f"track {rec['track_id']}: {modality} encoder failed: {reason}", "encoder_error", rec["track_id"]))
    if vectors is not None:
        ok = [i for i in range(len(kept)) if i not in failed]
        emit_embeddings(result, [kept[i] for i in ok], vectors[ok], modality, encoder)


def emit_embeddings(
    result: BatchResult, kept: list[tuple[RawRecord, dict[str, Any]]], vectors: np.ndarray, modality: str, encoder: BatchEncoder
) -> None:
    finite = np.isfinite(vectors).all(axis=1)
    for (raw, rec), vec, ok in zip(kept, vectors, finite, strict=True):
        if not ok:
            result.dead.append(DeadLetter(raw, f"track {rec['track_id']}: {modality} encoder produced NaN/inf", "nan", rec["track_id"]))
            continue
        try:  # one record's output that cannot be encoded is its own dead letter, never its batch's
            value = avro_codec.encode(
                "Embedding",
                {
                    "track_id": rec["track_id"],
                    "event_time": rec["event_time"],
                    "modality": modality,
                    "model_id": encoder.model_id,
                    "dim": int(vectors.shape[1]),
                    "vector": vector_to_bytes(vec),
                    "ingest_time": rec["ingest_time"],
                    "source_offset": raw.offset,  # between equal event times the later track record wins
                },
            )
        except (ValueError, TypeError, OverflowError) as exc:
            result.dead.append(DeadLetter(raw, f"track {rec['track_id']}: cannot encode its Embedding record: {exc}",
                                          "encode_error", rec["track_id"]))
            continue
        result.outputs.append((rec["track_id"].encode(), value))
