"""The interaction logger's offline sink: every interaction exactly once in Parquet.

Rows are keyed by (user_id, item_id, timestamp, label); a retried or replayed batch, with the
same or other batch boundaries, adds nothing that is already there (streams.sinks.offline).
The trainer reads ``<root>/*.parquet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from streams.sinks.offline import OfflineLog, SourceRef

INTERACTION_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("label", pa.int8())]
)
_LOGS: dict[Path, OfflineLog] = {}


def interaction_log(root: Path) -> OfflineLog:
    root = Path(root)
    if root not in _LOGS:
        _LOGS[root] = OfflineLog(root, ("user_id", "item_id", "timestamp", "label"), INTERACTION_SCHEMA)
    return _LOGS[root]


def write_interactions(root: Path, records: Sequence[dict[str, Any]], sources: Sequence[SourceRef] | None = None) -> int:
    """Append decoded Interaction records (`sources`: the Kafka record of each, the exactly-once
    key: streams.sinks.offline); returns how many rows were new."""
    if not records:
        return 0
    df = pd.DataFrame(
        {
            "user_id": [r["user_id"] for r in records],
            "item_id": [r["track_id"] for r in records],
            "timestamp": pd.array([r["event_time"] for r in records], dtype="int64"),
            "label": pd.array([r["label"] for r in records], dtype="int8"),
        }
    )
    return interaction_log(root).append(df, sources)
