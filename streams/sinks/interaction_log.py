"""The interaction logger's offline sink: Parquet files named by (topic, partition, offset range).

A replayed batch rewrites the same file with the same rows, so the log is idempotent under
at-least-once delivery. The trainer reads ``<root>/*.parquet``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from streams.records import RawRecord


def write_interactions(root: Path, batch: Sequence[tuple[RawRecord, dict[str, Any]]]) -> list[Path]:
    by_partition: dict[tuple[str, int], list[tuple[RawRecord, dict[str, Any]]]] = defaultdict(list)
    for raw, rec in batch:
        by_partition[(raw.topic, raw.partition)].append((raw, rec))
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for (topic, partition), items in by_partition.items():
        first, last = items[0][0].offset, items[-1][0].offset
        df = pd.DataFrame(
            {
                "user_id": [r["user_id"] for _, r in items],
                "item_id": [r["track_id"] for _, r in items],
                "timestamp": pd.array([r["event_time"] for _, r in items], dtype="int64"),
                "label": pd.array([r["label"] for _, r in items], dtype="int8"),
                "offset": pd.array([raw.offset for raw, _ in items], dtype="int64"),
            }
        )
        path = root / f"{topic}-p{partition}-{first:012d}-{last:012d}.parquet"
        tmp = path.with_suffix(".tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        written.append(path)
    return written
