"""The offline Parquet log (streams.sinks.offline) with one index connection for its life:
threads share it without losing or doubling rows, a key twice in a batch keeps its last row, a
failed write leaves the index as it was (its retry writes the rows), and the keys stay the ones
older logs stored."""

from __future__ import annotations

import sqlite3
import threading

import pandas as pd
import pyarrow as pa
import pytest

from streams.sinks import offline as offline_module
from streams.sinks.offline import INDEX_NAME, OfflineLog

pytestmark = pytest.mark.unit

KEY = ("user_id", "timestamp")
SCHEMA = pa.schema([("user_id", pa.string()), ("timestamp", pa.int64()), ("label", pa.int8())])


def _frame(rows):
    return pd.DataFrame({"user_id": [r[0] for r in rows], "timestamp": pd.array([r[1] for r in rows], dtype="int64"),
                         "label": pd.array([r[2] for r in rows], dtype="int8")})


def _stored(folder):
    parts = sorted(folder.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()


def test_threads_share_the_log_and_each_row_is_stored_once(tmp_path):
    log = OfflineLog(tmp_path, KEY, SCHEMA)
    batches = [[(f"u{(t * 7 + i) % 40}", i % 25, 1) for i in range(b * 5, b * 5 + 5)] for t in range(4) for b in range(10)]
    errors: list[BaseException] = []

    def work(mine):
        try:
            for batch in mine:
                log.append(_frame(batch))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(batches[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = {(u, ts) for batch in batches for u, ts, _ in batch}
    stored = _stored(tmp_path)
    assert len(stored) == len(expected) == log.count()
    assert set(zip(stored["user_id"], stored["timestamp"], strict=True)) == expected


def test_a_key_twice_in_a_batch_keeps_its_last_row_and_the_schema_order(tmp_path):
    log = OfflineLog(tmp_path, KEY, SCHEMA)
    df = _frame([("a", 1, 0), ("b", 2, 0), ("a", 1, 1)])[["label", "timestamp", "user_id"]]  # columns shuffled
    assert log.append(df) == 2
    stored = _stored(tmp_path)
    assert list(stored.columns) == SCHEMA.names
    assert stored.sort_values("user_id")["label"].tolist() == [1, 0]


def test_a_failed_write_leaves_the_index_unchanged_and_its_retry_writes(tmp_path, monkeypatch):
    log = OfflineLog(tmp_path, KEY, SCHEMA)
    assert log.append(_frame([("a", 1, 0)])) == 1

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(offline_module.pq, "write_table", broken)
        with pytest.raises(OSError, match="disk full"):
            log.append(_frame([("b", 2, 0), ("c", 3, 0)]))
    assert log.count() == 1
    assert log.append(_frame([("b", 2, 0), ("c", 3, 0)])) == 2
    assert log.count() == 3 and len(_stored(tmp_path)) == 3


class _CommitFailsOnce:
    """The log's connection, whose next commit fails as a locked database would."""

    def __init__(self, conn):
        self.conn, self.failed = conn, False

    def commit(self):
        if not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database is locked")
        self.conn.commit()

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_a_failed_commit_is_rolled_back_so_the_shared_connection_holds_no_half_batch(tmp_path):
    log = OfflineLog(tmp_path, KEY, SCHEMA)
    assert log.append(_frame([("a", 1, 0)])) == 1
    log._conn = _CommitFailsOnce(log._conn)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        log.append(_frame([("b", 2, 0), ("c", 3, 0)]))
    assert log.count() == 1  # without the rollback this connection would still see b and c
    assert log.append(_frame([("b", 2, 0), ("c", 3, 0)])) == 2  # the retry rewrites the same part
    assert log.count() == 3 and len(_stored(tmp_path)) == 3


def test_keys_are_the_columns_as_str_joined_by_unit_separators(tmp_path):
    """The index of a log written before keeps working: keys are str() of each column's value."""
    log = OfflineLog(tmp_path, KEY, SCHEMA)
    log.append(_frame([("u", 42, 1)]))
    with sqlite3.connect(tmp_path / INDEX_NAME) as conn:
        assert [k for (k,) in conn.execute("SELECT key FROM rows")] == ["u\x1f42"]
    assert log._keys(_frame([("u", 42, 1), ("v", -3, 0)])) == ["u\x1f42", "v\x1f-3"]


def test_the_trainer_reads_only_its_window_pushed_into_the_scan(tmp_path) -> None:
    """read_interaction_logs(since_ms=...) gives exactly the rows of the full read inside the
    window (the filter runs in pyarrow's Parquet scan, not on a full frame)."""
    from streams.sinks.interaction_log import write_interactions
    from trainer.dataset import read_interaction_logs

    records = [{"user_id": f"u{i % 7}", "track_id": f"t{i}", "event_time": 1_000 + 10 * i, "label": i % 2} for i in range(300)]
    for start in range(0, 300, 100):  # three part files
        write_interactions(tmp_path, records[start : start + 100])
    full = read_interaction_logs(tmp_path)
    window = read_interaction_logs(tmp_path, since_ms=2_000)
    expected = full[full["timestamp"] >= 2_000].sort_values("timestamp").reset_index(drop=True)
    assert len(window) == 200
    pd.testing.assert_frame_equal(window.sort_values("timestamp").reset_index(drop=True), expected)
