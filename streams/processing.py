"""The workers' logic as plain functions of a batch (no Kafka here): decode, validate,
encode or assign, and split into outputs and dead letters. The Faust agents in
``streams.app`` are thin loops around these functions.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streams import avro_codec
from streams.kept import entry_of, kept_key
from streams.records import BatchResult, DeadLetter, RawRecord, vector_from_bytes, vector_to_bytes

log = logging.getLogger(__name__)


class BatchEncoder(Protocol):
    model_id: str
    dim: int

    def encode(self, batch: Sequence[Any]) -> np.ndarray: ...


class _TextOps(Protocol):
    def __call__(self, meta: dict[str, Any]) -> str: ...


# -- text encoder worker ---------------------------------------------------------------------------
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


def _encode_kept(
    result: BatchResult, kept: list[tuple[RawRecord, dict[str, Any]]], items: list[Any], encoder: BatchEncoder, modality: str
) -> None:
    vectors, failed = encode_isolating(encoder, items)
    for i, reason in failed.items():
        raw, rec = kept[i]
        result.dead.append(DeadLetter(raw, f"track {rec['track_id']}: {modality} encoder failed: {reason}", "encoder_error", rec["track_id"]))
    if vectors is not None:
        ok = [i for i in range(len(kept)) if i not in failed]
        _emit_embeddings(result, [kept[i] for i in ok], vectors[ok], modality, encoder)


def encode_text_batch(
    records: Sequence[RawRecord], encoder: BatchEncoder, build_text: _TextOps, classify_text: Any
) -> BatchResult:
    """tracks.metadata records -> embeddings.text records (one encoder call per batch; an item
    that makes the model throw is found by bisection and dead-lettered alone)."""
    result = BatchResult()
    texts: list[str] = []
    kept: list[tuple[RawRecord, dict[str, Any]]] = []
    for raw in records:
        rec = _decode_or_dead(raw, "TrackMetadata", "undecodable metadata", result.dead)
        if rec is None:
            continue
        text = rec["text"] if rec.get("text") else build_text(rec)
        problem = classify_text(text)
        if problem is not None:
            error_type, reason = problem
            result.dead.append(DeadLetter(raw, f"track {rec['track_id']}: {reason}", error_type, rec["track_id"]))
            continue
        texts.append(text)
        kept.append((raw, rec))
    if texts:
        _encode_kept(result, kept, texts, encoder, "text")
    return result


# -- audio encoder worker --------------------------------------------------------------------------
def encode_audio_batch(
    records: Sequence[RawRecord], encoder: BatchEncoder, decode_audio: Any, max_inline_bytes: int, max_file_bytes: int
) -> BatchResult:
    """tracks.audio records -> embeddings.audio records. Audio comes as file:// URI or inline bytes."""
    result = BatchResult()
    waves: list[np.ndarray] = []
    kept: list[tuple[RawRecord, dict[str, Any]]] = []
    for raw in records:
        rec = _decode_or_dead(raw, "TrackAudio", "undecodable audio record", result.dead)
        if rec is None:
            continue
        try:
            source = _audio_source(rec, max_inline_bytes)
            wave = decode_audio(source, encoder_sample_rate(encoder), max_file_bytes)
        except Exception as exc:  # noqa: BLE001 - every failure of one item goes to the DLQ
            result.dead.append(DeadLetter(raw, f"track {rec['track_id']}: {exc}", "bad_audio", rec["track_id"]))
            continue
        waves.append(wave)
        kept.append((raw, rec))
    if waves:
        _encode_kept(result, kept, waves, encoder, "audio")
    return result


def encoder_sample_rate(encoder: Any) -> int:
    return int(getattr(encoder, "sample_rate", 16000))


def _audio_source(rec: dict[str, Any], max_inline_bytes: int) -> str | bytes:
    if rec.get("data") is not None:
        if len(rec["data"]) > max_inline_bytes:
            raise ValueError(f"inline audio of {len(rec['data'])} bytes exceeds the {max_inline_bytes}-byte limit")
        return bytes(rec["data"])
    uri = rec.get("uri")
    if not uri:
        raise ValueError("audio record has neither uri nor data")
    if uri.startswith("file://"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        return url2pathname(urlparse(uri).path)  # file:///a%20b.ogg -> /a b.ogg
    if "://" in uri:
        raise ValueError(f"unsupported audio URI scheme in {uri!r} (file:// or inline bytes)")
    return str(uri)


def _emit_embeddings(
    result: BatchResult, kept: list[tuple[RawRecord, dict[str, Any]]], vectors: np.ndarray, modality: str, encoder: BatchEncoder
) -> None:
    finite = np.isfinite(vectors).all(axis=1)
    for (raw, rec), vec, ok in zip(kept, vectors, finite, strict=True):
        if not ok:
            result.dead.append(DeadLetter(raw, f"track {rec['track_id']}: {modality} encoder produced NaN/inf", "nan", rec["track_id"]))
            continue
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
            },
        )
        result.outputs.append((rec["track_id"].encode(), value))


# -- PSRQ assigner ---------------------------------------------------------------------------------
class CodebookSetLike(Protocol):
    codebooks: dict[str, Any]
    manifest: dict[str, Any]

    def encode(self, modality: str, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ActiveCodebooks:
    """The assigner's frozen codebook version in memory (swapped atomically as a whole)."""

    version: str
    codebooks: CodebookSetLike

    def dim(self, modality: str) -> int | None:
        q = self.codebooks.codebooks.get(modality)
        return None if q is None else int(q.dim)

    def model_id(self, modality: str) -> str | None:
        """The encoder the codebook was fitted on (None: not recorded, accept any)."""
        ids = self.codebooks.manifest.get("encoder_model_ids") or {}
        return ids.get(modality) or None


class IdentityResolver(Protocol):
    """Hands out identity codes per semantic bucket (streams.identity: TableIdentities, KafkaIdentities)."""

    def resolve(
        self, version: str, modality: str, capacity: int, track_ids: Sequence[str], prefixes: np.ndarray,
        distances: np.ndarray, hint_version: str | None = None,
    ) -> tuple[np.ndarray, dict[int, str]]: ...


def assign_batch(
    records: Sequence[RawRecord],
    state: MutableMapping[str, Any],
    active: ActiveCodebooks,
    joint_embedding: Any,
    also: Sequence[ActiveCodebooks] = (),
    identities: IdentityResolver | None = None,
) -> BatchResult:
    """embeddings.{text,audio} records -> sids.assigned records.

    `state` maps track_id -> JSON-able dict with the latest embedding per modality: the join
    state (streams.kept.KeptEmbeddings in the worker). Every accepted embedding is also returned
    in `result.kept` for the compacted embeddings.kept topic. `also`: further versions (a
    pending one during a backfill) whose SID records are emitted too; inputs are checked
    against `active` (a pending version has passed the gate: same dims and encoders). A track's text SID is emitted as soon as
    its text embedding arrives; audio and joint SIDs when its audio arrives (in any order).
    SID event time = max(event times of the modalities used) + (number of modalities - 1) ms,
    so a fuller record is always newer than a partial one and a replay yields the same record.
    A ``psrq_id`` codebook's identity codes come from `identities` (the pending version's with
    the live version's codes as hints, so IDs survive an aligned refit).
    """
    result = BatchResult()
    touched: dict[str, RawRecord] = {}
    for raw in records:
        rec = _decode_or_dead(raw, "Embedding", "undecodable embedding", result.dead)
        if rec is None:
            continue
        modality, track_id = rec["modality"], rec["track_id"]
        expected_dim = active.dim(modality)
        if expected_dim is None:
            result.dead.append(DeadLetter(raw, f"no {modality} codebook in version {active.version}", "no_codebook", track_id))
            continue
        try:
            vec = vector_from_bytes(rec["vector"], rec["dim"])
        except ValueError as exc:
            result.dead.append(DeadLetter(raw, f"track {track_id}: {exc}", "wrong_dim", track_id))
            continue
        if vec.shape[0] != expected_dim:
            result.dead.append(
                DeadLetter(raw, f"track {track_id}: {modality} embedding dim {vec.shape[0]} != codebook dim {expected_dim}", "wrong_dim", track_id)
            )
            continue
        if not np.isfinite(vec).all():
            result.dead.append(DeadLetter(raw, f"track {track_id}: {modality} embedding has NaN/inf", "nan", track_id))
            continue
        fitted_on = active.model_id(modality)
        if fitted_on is not None and rec["model_id"] != fitted_on:
            result.dead.append(
                DeadLetter(raw, f"track {track_id}: {modality} embedding from {rec['model_id']!r}, codebook fitted on {fitted_on!r}", "model_mismatch", track_id)
            )
            continue
        entry = dict(state.get(track_id) or {})
        previous = entry.get(modality)
        if previous is not None and previous["event_time"] > rec["event_time"]:
            continue  # an older version of this modality arrived late: the newer one stands
        entry[modality] = entry_of(rec)
        state[track_id] = entry
        result.kept.append((raw.partition, kept_key(track_id, modality), raw.value or b""))
        touched[track_id] = raw
    if touched:
        for version in (active, *also):
            code_tracks(result, list(touched), state, version, joint_embedding, identities,
                        hint_version=None if version is active else active.version, raws=touched)
    return result


def full_ids(
    active: ActiveCodebooks, modality: str, X: np.ndarray, track_ids: Sequence[str],
    identities: IdentityResolver | None, hint_version: str | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Codes of X's rows under the modality's codebook: the SID, or for a ``psrq_id`` codebook
    the semantic layers followed by the identity codes that `identities` hands out.
    Returns (codes [n, L(+m)], {row: reason} for rows that got no ID)."""
    return full_ids_many(active, [(modality, X, track_ids)], identities, hint_version)[0]


def full_ids_many(
    active: ActiveCodebooks, wanted: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    identities: IdentityResolver | None, hint_version: str | None = None,
) -> list[tuple[np.ndarray, dict[int, str]]]:
    """`full_ids` for several (modality, X, track_ids) at once: the identity codes of every
    ``psrq_id`` modality are claimed together (one claim round trip per round, not one per
    modality, when `identities` has ``resolve_many``)."""
    out: list[tuple[np.ndarray, dict[int, str]] | None] = [None] * len(wanted)
    claiming: list[tuple[int, Any, np.ndarray, Any]] = []
    for n, (modality, X, track_ids) in enumerate(wanted):
        q = active.codebooks.codebooks[modality]
        if not hasattr(q, "identity_distances"):
            out[n] = (active.codebooks.encode(modality, X), {})
            continue
        if identities is None:
            raise ValueError(f"the {modality} codebook of {active.version} hands out identity codes: the assigner needs an identity registry")
        from streams.identity import Request

        semantic = q.semantic_encode(X)
        request = Request(active.version, modality, q.capacity, list(track_ids), semantic,
                          q.identity_distances(np.asarray(X, dtype=np.float32), semantic), hint_version)
        claiming.append((n, q, semantic, request))
    if claiming:
        requests = [r for *_, r in claiming]
        many = getattr(identities, "resolve_many", None)
        if many is not None:
            resolved = many(requests)
        else:
            resolved = [identities.resolve(r.version, r.modality, r.capacity, r.track_ids, r.prefixes, r.distances, r.hint_version)
                        for r in requests]
        for (n, q, semantic, _), (composite, failed) in zip(claiming, resolved, strict=True):
            out[n] = (np.concatenate([semantic, q.split(np.maximum(composite, 0))], axis=1), failed)
    return [o for o in out if o is not None]


def code_tracks(
    result: BatchResult, track_ids: list[str], state: MutableMapping[str, Any], active: ActiveCodebooks, joint_embedding: Any,
    identities: IdentityResolver | None = None, hint_version: str | None = None, raws: dict[str, RawRecord] | None = None,
) -> None:
    """SidAssigned records of `track_ids` under `active`. A track that gets no ID for a modality
    (its identity bucket is full) is dead-lettered with the reason (when `raws` names its record)
    and keeps its other modalities' IDs; without `raws` (the backfill) that is an error. The
    identity codes of all modalities are claimed together."""
    entries = [state[t] for t in track_ids]
    codes: dict[str, dict[str, list[int]]] = {t: {} for t in track_ids}
    wanted: list[tuple[str, list[int], np.ndarray]] = []
    for modality in ("text", "audio"):
        idx = [i for i, e in enumerate(entries) if modality in e]
        if not idx or active.dim(modality) is None:
            continue
        wanted.append((modality, idx, np.stack([np.frombuffer(bytes.fromhex(entries[i][modality]["vector"]), dtype="<f4") for i in idx])))
    both = [i for i, e in enumerate(entries) if "text" in e and "audio" in e]
    if both and active.dim("joint") is not None:
        T = np.stack([np.frombuffer(bytes.fromhex(entries[i]["text"]["vector"]), dtype="<f4") for i in both])
        A = np.stack([np.frombuffer(bytes.fromhex(entries[i]["audio"]["vector"]), dtype="<f4") for i in both])
        wanted.append(("joint", both, joint_embedding(T, A)))
    found = full_ids_many(active, [(m, X, [track_ids[i] for i in rows]) for m, rows, X in wanted], identities, hint_version)
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
            },
        )
        result.outputs.append((track_id.encode(), value))


# -- Feast writer ----------------------------------------------------------------------------------
def decode_sid_batch(records: Sequence[RawRecord]) -> tuple[list[tuple[RawRecord, dict[str, Any]]], list[DeadLetter]]:
    """sids.assigned records -> ((raw, decoded record) pairs, dead letters)."""
    rows: list[tuple[RawRecord, dict[str, Any]]] = []
    dead: list[DeadLetter] = []
    for raw in records:
        rec = _decode_or_dead(raw, "SidAssigned", "undecodable SID record", dead)
        if rec is None:
            continue
        rows.append((raw, rec))
    return rows, dead


def _decode_or_dead(raw: RawRecord, schema: str, what: str, dead: list[DeadLetter]) -> dict[str, Any] | None:
    """The record, or None after adding an `undecodable` dead letter naming `what`."""
    try:
        return avro_codec.decode(raw.value, expected=schema)[1]
    except avro_codec.DecodeError as exc:
        dead.append(DeadLetter(raw, f"{what}: {exc}", "undecodable", key_text(raw)))
        return None


def key_text(raw: RawRecord) -> str | None:
    """The record's key as text (a track id), or None when it has none or it is not UTF-8."""
    if raw.key is None:
        return None
    try:
        return raw.key.decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- interaction logger ----------------------------------------------------------------------------
HISTORY_LEN = 20


def decode_interactions(records: Sequence[RawRecord]) -> tuple[list[tuple[RawRecord, dict[str, Any]]], list[DeadLetter]]:
    ok: list[tuple[RawRecord, dict[str, Any]]] = []
    dead: list[DeadLetter] = []
    for raw in records:
        rec = _decode_or_dead(raw, "Interaction", "undecodable interaction", dead)
        if rec is None:
            continue
        if rec["label"] not in (0, 1):
            dead.append(DeadLetter(raw, f"label {rec['label']} is not 0 or 1", "bad_label", rec["track_id"]))
            continue
        ok.append((raw, rec))
    return ok, dead


def history_version(stored: Any, rec: dict[str, Any]) -> dict[str, Any] | None:
    """The user's next history row, or None when `rec` changes nothing (a replay, a negative).

    The row's event time is max(newest positive, previous row's time + 1 ms): it grows with
    every change, so a late, older positive that changes the list still replaces the stored
    row in Feast (whose stores keep only newer rows)."""
    if isinstance(stored, list):  # rows written before the time counter existed
        stored = {"items": stored, "written_ms": int(stored[-1][0]) if stored else 0}
    stored = stored or {"items": [], "written_ms": 0}
    items = update_history(stored["items"], rec)
    if items == stored["items"]:
        return None
    return {"items": items, "written_ms": max(int(items[-1][0]), int(stored["written_ms"]) + 1)}


def update_history(history: list[list[Any]] | None, rec: dict[str, Any]) -> list[list[Any]]:
    """Last HISTORY_LEN positives as [event_time, track_id], time-ordered; replays are no-ops."""
    items = list(history or [])
    if rec["label"] != 1:
        return items
    entry = [rec["event_time"], rec["track_id"]]
    if entry in items:
        return items
    items.append(entry)
    items.sort(key=lambda e: (e[0], e[1]))
    return items[-HISTORY_LEN:]
