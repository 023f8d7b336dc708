"""The state roles keep, in one place, behind one contract: a role declares its states
(`RoleHandler.states()`), and the runtime restores each one, on the role's own thread, when
partitions are assigned to the worker and before their first batch.

- `KeptState`: the assigner's join state, each track's latest embedding per modality
  (streams.state.kept.KeptEmbeddings: local SQLite caught up from the compacted embeddings.kept
  topic, for the input partitions this worker owns);
- `IdentityState`: the identity claims (streams.identity.KafkaIdentities, read from the compacted
  sids.identity topic; every assigner reads all of it);
- `OfflineLogsState`: how far each source partition was written to the offline Parquet logs
  (streams.sinks.offline: in the part names, no shared index), re-read after every assignment;
- `TableState`: a Faust table (the logger's user history), which Faust restores from its own
  changelog topic before the agent sees an event: nothing for the runtime to do.

This is the seam on-disk stores for catalogue-sized state go behind."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from streams import metrics
from streams.kafka_clients import Brokers
from streams.state.kept import KeptEmbeddings

if TYPE_CHECKING:  # streams.identity imports streams.state.identity_store: no runtime import back
    from streams.identity import KafkaIdentities

log = logging.getLogger(__name__)


class RestorableState(Protocol):
    """A role's state: `restore` catches it up for the partitions now owned ({input topic:
    partitions}) and returns how many records it read, or raises when it could not catch up
    (streams.records.RestoreIncomplete): the runtime then retries it before the role's next batch.
    Blocking; runs on the role's thread."""

    name: str

    def restore(self, partitions: dict[str, list[int]]) -> int: ...


class KeptState:
    name = "kept embeddings"

    def __init__(self, kept: KeptEmbeddings, bootstrap: Brokers, topic: str, stall_s: float = 30.0) -> None:
        self.kept, self.bootstrap, self.topic, self.stall_s = kept, bootstrap, topic, stall_s

    def restore(self, partitions: dict[str, list[int]]) -> int:
        # kept records go to the partition of the embedding they came from: the owned input partitions
        owned = sorted({p for ps in partitions.values() for p in ps})
        if not owned:
            return 0
        read = self.kept.restore_from(self.bootstrap, self.topic, owned, stall_s=self.stall_s)
        metrics.KEPT_ROWS.set(self.kept.count())
        return read


class IdentityState:
    name = "identity claims"

    def __init__(self, identities: KafkaIdentities) -> None:
        self.identities = identities

    def restore(self, partitions: dict[str, list[int]]) -> int:
        return int(self.identities.catch_up())  # every bucket: claims are not partitioned like the inputs


class OfflineLogsState:
    """The offline logs' per-partition high offsets (streams.sinks.offline) are re-read from the
    part names at the next append after an assignment: another owner may have written meanwhile."""

    name = "offline log offsets"

    def restore(self, partitions: dict[str, list[int]]) -> int:
        from streams.sinks.offline import forget_all

        forget_all()
        return 0


class TableState:
    """A Faust table: Faust restores it from its changelog before the agent's first event."""

    def __init__(self, name: str, table: Any) -> None:
        self.name, self.table = name, table

    def restore(self, partitions: dict[str, list[int]]) -> int:
        return 0
