"""The interaction logger's offline sink: every interaction exactly once in Parquet.

`InteractionLog.write(records, sources)` (the sink contract, streams.sinks.contract) appends the
decoded Interaction records to an OfflineLog, exactly once per source record: a retried or
replayed batch, with the same or other batch boundaries, adds nothing that is already there
(streams.sinks.offline). The trainer reads ``<root>/*.parquet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from streams.sinks.contract import SourceRef, WriteResult
from streams.sinks.offline import OfflineLog

INTERACTION_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("label", pa.int8())]
)
_LOGS: dict[Path, OfflineLog] = {}


def interaction_log(root: Path) -> OfflineLog:
    root = Path(root)
    if root not in _LOGS:
        _LOGS[root] = OfflineLog(root, ("user_id", "item_id", "timestamp", "label"), INTERACTION_SCHEMA)
    return _LOGS[root]


class InteractionLog:
    """The interaction log as a sink (streams.sinks.contract): decoded Interaction records in,
    each stored once offline; a record already stored (a replay) counts as superseded."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def warm_up(self) -> None:
        interaction_log(self.root)

    def write(self, rows: Sequence[dict[str, Any]], sources: Sequence[SourceRef] | None = None) -> WriteResult:
        if not rows:
            return WriteResult()
        df = pd.DataFrame(
            {
                "user_id": [r["user_id"] for r in rows],
                "item_id": [r["track_id"] for r in rows],
                "timestamp": pd.array([r["event_time"] for r in rows], dtype="int64"),
                "label": pd.array([r["label"] for r in rows], dtype="int8"),
            }
        )
        written = interaction_log(self.root).append(df, sources)
        return WriteResult(offline=written, superseded=len(rows) - written)
