"""The PSRQ assigner role: embeddings.text / embeddings.audio (Embedding) -> sids.assigned
(SidAssigned), kept embeddings -> embeddings.kept.

State: each track's latest embedding per modality (streams.state.kept.KeptEmbeddings: local SQLite,
restored from the compacted embeddings.kept topic for the partitions this worker owns) and, for
``psrq_id`` codebooks, the identity claims (streams.identity.KafkaIdentities, read from
sids.identity). The codebook versions come from the registry (streams.codebooks.LiveCodebooks),
re-read every 5 s and when codebooks.control announces a version."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from typing import Any

import faust
import numpy as np

from psrq import joint_embedding
from streams import avro_codec, metrics
from streams.assign import IdentityResolver, JointEmbedding, code_tracks
from streams.codebooks import ActiveCodebooks, LiveCodebooks
from streams.event_time import DEFAULT_POLICY, TimePolicy, admit
from streams.identity import KafkaIdentities
from streams.kafka_clients import Brokers
from streams.records import BatchResult, DeadLetter, RawRecord, decode_or_dead, vector_from_bytes
from streams.runtime import RoleHandler, Runtime
from streams.state import IdentityState, KeptState, RestorableState
from streams.state.kept import KeptEmbeddings, entry_of, kept_key
from streams.topology import CODEBOOKS_CONTROL, EMBEDDINGS_KEPT

log = logging.getLogger(__name__)

WATCH_EVERY_S = 5.0  # registry pointers and the join table's expiry, between batches too


def assign_batch(
    records: Sequence[RawRecord],
    state: MutableMapping[str, Any],
    active: ActiveCodebooks,
    joint: JointEmbedding,
    also: Sequence[ActiveCodebooks] = (),
    identities: IdentityResolver | None = None,
    policy: TimePolicy = DEFAULT_POLICY,
) -> BatchResult:
    """embeddings.{text,audio} records -> sids.assigned records.

    `state` maps track_id -> JSON-able dict with the latest embedding per modality: the join
    state (streams.state.kept.KeptEmbeddings in the worker). Every accepted embedding is also returned
    in `result.kept` for the compacted embeddings.kept topic. `also`: further versions (a
    pending one during a backfill) whose SID records are emitted too; inputs are checked
    against `active` (a pending version has passed the gate: same dims and encoders). A track's
    text SID is emitted as soon as its text embedding arrives; audio and joint SIDs when its
    audio arrives (in any order). SID event time = max(event times of the modalities used) +
    (number of modalities - 1) ms, so a fuller record is always newer than a partial one and a
    replay yields the same record. A ``psrq_id`` codebook's identity codes come from
    `identities` (the pending version's with the live version's codes as hints, so IDs survive
    an aligned refit).

    Event times: an embedding outside `policy` is a `bad_event_time` dead letter; one older than
    the kept embedding of its track and modality (by event time, then by the offset of the track
    record it was encoded from) is superseded (counted, not emitted), unless the
    kept time is itself beyond what this record's policy admits: a time kept before the policy
    existed never wins against a valid record (the track heals with its next one).
    """
    result = BatchResult()
    touched: dict[str, RawRecord] = {}
    for raw in records:
        rec = decode_or_dead(raw, "Embedding", "undecodable embedding", result.dead)
        if rec is None or not admit(raw, rec, policy, result.dead):
            continue
        problem = _problem(rec, active)
        if problem is not None:
            error_type, reason = problem
            result.dead.append(DeadLetter(raw, reason, error_type, rec["track_id"]))
            continue
        modality, track_id = rec["modality"], rec["track_id"]
        entry = dict(state.get(track_id) or {})
        previous = entry.get(modality)
        if previous is not None and previous["event_time"] <= policy.upper(raw) and (
                (rec["event_time"], rec.get("source_offset", -1)) < (previous["event_time"], previous.get("source_offset", -1))):
            # an older version of this modality arrived late (older time, or the same time from an
            # earlier track record): the newer one stands
            result.supersede("older_than_kept")
            continue
        entry[modality] = entry_of(rec)
        for other, kept in entry.items():  # heal: a kept time beyond this record's bound would make every SID "newer"
            if other != modality and kept["event_time"] > policy.upper(raw):
                entry[other] = {**kept, "event_time": rec["event_time"]}
                metrics.CLAMPED.labels("kept_event_time").inc()
        state[track_id] = entry
        result.kept.append((raw.partition, kept_key(track_id, modality), raw.value or b""))
        touched[track_id] = raw
    if touched:
        for version in (active, *also):
            code_tracks(result, list(touched), state, version, joint, identities,
                        hint_version=None if version is active else active.version, raws=touched)
    return result


def _problem(rec: dict[str, Any], active: ActiveCodebooks) -> tuple[str, str] | None:
    """(error type, reason) when the embedding cannot be coded under `active`, else None."""
    modality, track_id = rec["modality"], rec["track_id"]
    expected_dim = active.dim(modality)
    if expected_dim is None:
        return "no_codebook", f"no {modality} codebook in version {active.version}"
    try:
        vec = vector_from_bytes(rec["vector"], rec["dim"])
    except ValueError as exc:
        return "wrong_dim", f"track {track_id}: {exc}"
    if vec.shape[0] != expected_dim:
        return "wrong_dim", f"track {track_id}: {modality} embedding dim {vec.shape[0]} != codebook dim {expected_dim}"
    if not np.isfinite(vec).all():
        return "nan", f"track {track_id}: {modality} embedding has NaN/inf"
    fitted_on = active.model_id(modality)
    if fitted_on is not None and rec["model_id"] != fitted_on:
        return "model_mismatch", f"track {track_id}: {modality} embedding from {rec['model_id']!r}, codebook fitted on {fitted_on!r}"
    return None


class AssignerRole(RoleHandler):
    role = "assigner"

    def __init__(self, kept: KeptEmbeddings, codebooks: LiveCodebooks, identities: KafkaIdentities | None,
                 bootstrap: Brokers, policy: TimePolicy = DEFAULT_POLICY, stall_s: float = 30.0) -> None:
        if codebooks.live is None:
            raise ValueError("the assigner needs a live codebook version")
        self.kept, self.codebooks, self.identities, self.bootstrap = kept, codebooks, identities, bootstrap
        self.policy, self.stall_s = policy, stall_s

    async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
        self._watch()
        live, pending = self.codebooks.live, self.codebooks.pending
        also = () if pending is None else (pending,)
        result: BatchResult = await rt.blocking(self.role, assign_batch, raws, self.kept, live, joint_embedding, also,
                                                self.identities, self.policy)
        await rt.blocking(self.role, self.kept.commit)  # the batch's kept rows in one transaction
        return result

    def delivered(self, result: BatchResult, kept_offsets: dict[int, int]) -> None:
        if kept_offsets:
            self.kept.mark_written(self._kept_topic, kept_offsets)
        metrics.JOIN_WAITING.set(self.kept.waiting)

    def bind(self, app: faust.App, rt: Runtime) -> None:
        self._kept_topic = rt.names.name(EMBEDDINGS_KEPT)

        @app.timer(interval=WATCH_EVERY_S)
        async def watch_codebooks() -> None:
            self._watch()
            metrics.JOIN_WAITING.set(self.kept.waiting)

        @app.agent(app.topic(rt.names.name(CODEBOOKS_CONTROL), partitions=1), name="codebook-control")
        async def codebook_control(stream: faust.StreamT) -> None:
            async for value in stream:
                try:
                    _, rec = avro_codec.decode(value, expected="CodebookControl")
                except avro_codec.DecodeError as exc:
                    log.warning("ignoring bad control record: %s", exc)
                    continue
                log.info("control: codebook version %s published", rec["codebook_version"])
                self.codebooks.refresh()

    def states(self) -> Sequence[RestorableState]:
        kept: list[RestorableState] = [KeptState(self.kept, self.bootstrap, self._kept_topic, self.stall_s)]
        return kept if self.identities is None else [*kept, IdentityState(self.identities)]

    def _watch(self) -> None:
        self.codebooks.refresh()
        self.kept.expire()
