"""The text encoder role: tracks.metadata (TrackMetadata) -> embeddings.text (Embedding).

One encoder call per batch; a record that does not decode, whose text is empty or unusable, or
that makes the model throw (found by bisection) is dead-lettered alone with the reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from encoders import build_track_text, classify_text
from streams.event_time import DEFAULT_POLICY, TimePolicy
from streams.records import BatchResult, RawRecord
from streams.roles.encoding import BatchEncoder, Prepared, encode_records
from streams.runtime import RoleHandler, Runtime


def encode_text_batch(records: Sequence[RawRecord], encoder: BatchEncoder,
                      build_text: Callable[[dict[str, Any]], str] = build_track_text,
                      classify: Callable[[Any], tuple[str, str] | None] = classify_text,
                      policy: TimePolicy = DEFAULT_POLICY) -> BatchResult:
    """tracks.metadata records -> embeddings.text records (one encoder call per batch; an item
    that makes the model throw is found by bisection and dead-lettered alone; an event time
    outside `policy` is a `bad_event_time` dead letter)."""
    def prepare(rec: dict[str, Any]) -> Prepared:
        text = rec["text"] if rec.get("text") else build_text(rec)
        problem = classify(text)
        return (None, problem) if problem is not None else (text, None)

    return encode_records(records, "TrackMetadata", "undecodable metadata", prepare, encoder, "text", policy)


def warm_text_encoder(encoder: BatchEncoder, sizes: Sequence[int] = (1, 2, 3, 5, 8, 13),
                      words: Sequence[int] = (2, 12, 30)) -> int:
    """Encode a few batches of the sizes and token widths a trickle brings, before the first
    real one: each new (rows, width) shape and each thread of the encoder's pool pays its first
    call once (kernel selection, per-thread buffers, allocator growth). Returns the texts encoded."""
    done = 0
    for n_words in words:
        for n in sizes:
            encoder.encode([f"warm-up track {i}. Tags: " + ", ".join(["tag"] * n_words) for i in range(n)])
            done += n
    return done


class TextRole(RoleHandler):
    role = "text"

    def __init__(self, encoder: BatchEncoder, policy: TimePolicy = DEFAULT_POLICY) -> None:
        self.encoder, self.policy = encoder, policy

    async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
        result: BatchResult = await rt.blocking(self.role, encode_text_batch, raws, self.encoder, build_track_text,
                                                classify_text, self.policy)
        return result

    def warm_up(self) -> None:
        warm_text_encoder(self.encoder)
