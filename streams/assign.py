"""Coding tracks under a codebook version: SID records from the kept embeddings of a set of
tracks, shared by the assigner role (streams.roles.assigner) and the backfill (streams.backfill)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from psrq.identity import IdentityPSRQ
from streams import avro_codec
from streams.codebooks import ActiveCodebooks
from streams.identity import Request
from streams.records import BatchResult, DeadLetter, RawRecord

JointEmbedding = Callable[[np.ndarray, np.ndarray], np.ndarray]


class IdentityResolver(Protocol):
    """Hands out identity codes per semantic bucket (streams.identity: TableIdentities, KafkaIdentities)."""

    def resolve_many(self, requests: Sequence[Request]) -> list[tuple[np.ndarray, dict[int, str]]]: ...


def sid_codes(
    active: ActiveCodebooks, modality: str, X: np.ndarray, track_ids: Sequence[str],
    identities: IdentityResolver | None, hint_version: str | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Codes of X's rows under the modality's codebook: the SID, or for a ``psrq_id`` codebook
    the semantic layers followed by the identity codes that `identities` hands out (claimed now).
    Returns (codes [n, L(+m)], {row: reason} for rows that got no ID)."""
    return sid_codes_many(active, [(modality, X, track_ids)], identities, hint_version)[0]


def sid_codes_many(
    active: ActiveCodebooks, wanted: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    identities: IdentityResolver | None, hint_version: str | None = None,
) -> list[tuple[np.ndarray, dict[int, str]]]:
    """`sid_codes` for several (modality, X, track_ids) at once: the identity codes of every
    ``psrq_id`` modality are claimed together (one claim round trip per round, not one per modality)."""
    out: list[tuple[np.ndarray, dict[int, str]] | None] = [None] * len(wanted)
    claiming: list[tuple[int, IdentityPSRQ, np.ndarray, Request]] = []
    for n, (modality, X, track_ids) in enumerate(wanted):
        q = active.codebooks.codebooks[modality]
        if not isinstance(q, IdentityPSRQ):
            out[n] = (active.codebooks.encode(modality, X), {})
            continue
        if identities is None:
            raise ValueError(f"the {modality} codebook of {active.version} hands out identity codes: the assigner needs an identity registry")
        semantic = q.semantic_encode(X)
        request = Request(active.version, modality, q.capacity, list(track_ids), semantic,
                          q.identity_query(np.asarray(X, dtype=np.float32), semantic), hint_version)
        claiming.append((n, q, semantic, request))
    if claiming:
        resolved = identities.resolve_many([r for *_, r in claiming])  # type: ignore[union-attr]
        for (n, q, semantic, _), (composite, failed) in zip(claiming, resolved, strict=True):
            out[n] = (np.concatenate([semantic, q.split(np.maximum(composite, 0))], axis=1), failed)
    return [o for o in out if o is not None]


def _vectors(entries: Sequence[Mapping[str, dict]], rows: Sequence[int], modality: str) -> np.ndarray:
    return np.stack([np.frombuffer(bytes.fromhex(entries[i][modality]["vector"]), dtype="<f4") for i in rows])


def code_tracks(
    result: BatchResult, track_ids: list[str], state: Mapping[str, dict], active: ActiveCodebooks, joint_embedding: JointEmbedding,
    identities: IdentityResolver | None = None, hint_version: str | None = None, raws: dict[str, RawRecord] | None = None,
) -> None:
    """SidAssigned records of `track_ids` under `active`, from their kept entries in `state`.
    A track that gets no ID for a modality (its identity bucket is full) is dead-lettered with
    the reason (when `raws` names its record) and keeps its other modalities' IDs; without `raws`
    (the backfill) that is an error. The identity codes of all modalities are claimed together."""
    entries = [state[t] for t in track_ids]
    codes: dict[str, dict[str, list[int]]] = {t: {} for t in track_ids}
    wanted: list[tuple[str, list[int], np.ndarray]] = []
    for modality in ("text", "audio"):
        idx = [i for i, e in enumerate(entries) if modality in e]
        if not idx or active.dim(modality) is None:
            continue
        wanted.append((modality, idx, _vectors(entries, idx, modality)))
    both = [i for i, e in enumerate(entries) if "text" in e and "audio" in e]
    if both and active.dim("joint") is not None:
        wanted.append(("joint", both, joint_embedding(_vectors(entries, both, "text"), _vectors(entries, both, "audio"))))
    found = sid_codes_many(active, [(m, X, [track_ids[i] for i in rows]) for m, rows, X in wanted], identities, hint_version)
    for (modality, rows, _), (C, failed) in zip(wanted, found, strict=True):
        for row, i in enumerate(rows):
            if row in failed:
                track = track_ids[i]
                if raws is None or track not in raws:
                    raise RuntimeError(f"track {track}: no {modality} ID under {active.version}: {failed[row]}")
                result.dead.append(DeadLetter(raws[track], f"track {track}: no {modality} ID under {active.version}: {failed[row]}",
                                              "identity_full", track))
                continue
            codes[track_ids[i]][modality] = C[row].tolist()
    for track_id, entry in zip(track_ids, entries, strict=True):
        c = codes[track_id]
        present = [m for m in ("text", "audio") if m in entry]
        used = [m for m in present if m in c]
        if not used:
            continue
        event_time = max(entry[m]["event_time"] for m in used) + len(used) - 1
        try:  # one track's record that cannot be encoded is its own dead letter, never its batch's
            value = avro_codec.encode(
                "SidAssigned",
                {
                    "track_id": track_id,
                    "event_time": event_time,
                    "codebook_version": active.version,
                    "text_sid": c.get("text"),
                    "audio_sid": c.get("audio"),
                    "joint_sid": c.get("joint"),
                    "modalities": used,
                    "text_model_id": entry.get("text", {}).get("model_id", ""),
                    "audio_model_id": entry.get("audio", {}).get("model_id", ""),
                    "ingest_time": min(entry[m]["ingest_time"] for m in used),
                    "text_offset": entry["text"].get("source_offset", -1) if "text" in used else -1,
                    "audio_offset": entry["audio"].get("source_offset", -1) if "audio" in used else -1,
                },
            )
        except (ValueError, TypeError, OverflowError) as exc:
            if raws is None or track_id not in raws:
                raise
            result.dead.append(DeadLetter(raws[track_id], f"track {track_id}: cannot encode its SidAssigned record under "
                                          f"{active.version}: {exc}", "encode_error", track_id))
            continue
        result.outputs.append((track_id.encode(), value))
