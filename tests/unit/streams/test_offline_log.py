"""The offline Parquet log (streams.sinks.offline), exactly-once per source partition with no
shared index: retries and replays with other batch boundaries add nothing twice, a crash after a
part's rename leaves exactly that part, a new owner of a partition reads how far it was written
from the part names, threads share a log, a key twice in a batch keeps its last row, and a
failed write leaves nothing behind."""

from __future__ import annotations

import threading

import pandas as pd
import pyarrow as pa
import pytest

from streams.sinks import offline as offline_module
from streams.sinks.offline import OfflineLog, forget_all

pytestmark = pytest.mark.unit

KEY = ("user_id", "timestamp")
SCHEMA = pa.schema([("user_id", pa.string()), ("timestamp", pa.int64()), ("label", pa.int8())])


def _frame(rows):
    return pd.DataFrame({"user_id": [r[0] for r in rows], "timestamp": pd.array([r[1] for r in rows], dtype="int64"),
                         "label": pd.array([r[2] for r in rows], dtype="int8")})


def _stored(folder):
    parts = sorted(folder.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()


def _records(partition, offsets):
    """One row per record of `partition` at these offsets (its key is the offset: rows differ)."""
    rows = [(f"u{partition}", o, 1) for o in offsets]
    return _frame(rows), [("interactions", partition, o) for o in offsets]


def test_retries_and_replays_with_other_boundaries_store_each_record_once(tmp_path):
    log = OfflineLog(tmp_path, KEY, SCHEMA)
    assert log.append(*_records(0, range(0, 10))) == 10
    assert log.append(*_records(0, range(0, 10))) == 0  # a retry of the same batch
    assert log.append(*_records(0, range(5, 15))) == 5  # a replay with other boundaries: 10..14 are new
    assert log.append(*_records(1, range(0, 3))) == 3  # another partition has its own offsets
    stored = _stored(tmp_path)
    assert len(stored) == 18 == log.count() and not stored.duplicated().any()
    assert sorted(p.name for p in tmp_path.glob("part-*.parquet")) == [
        "part-interactions-p0-o0-9.parquet", "part-interactions-p0-o10-14.parquet", "part-interactions-p1-o0-2.parquet"]


def test_a_new_owner_reads_how_far_a_partition_was_written_from_the_part_names(tmp_path):
    """A crash after a part's rename, before the batch's offsets were committed: the next owner
    (another process: a fresh log object) gets the batch again and stores none of it; after an
    assignment (`forget_all`) an owner re-reads what another wrote meanwhile."""
    first = OfflineLog(tmp_path, KEY, SCHEMA)
    assert first.append(*_records(0, range(0, 20))) == 20
    second = OfflineLog(tmp_path, KEY, SCHEMA)  # no index file: the part names are the record
    assert second.written_upto() == {("interactions", 0): 19}
    assert second.append(*_records(0, range(10, 30))) == 10
    forget_all()  # the partition comes back to `first` (an assignment): it re-reads the names
    assert first.append(*_records(0, range(25, 35))) == 5  # 25..29 were written by `second`
    stored = _stored(tmp_path)
    assert len(stored) == 35 and not stored.duplicated().any()


def test_threads_share_the_log_and_each_row_is_stored_once(tmp_path):
    log = OfflineLog(tmp_path, KEY, SCHEMA)
    errors: list[BaseException] = []

    def work(partition):
        try:
            for start in range(0, 50, 5):
                log.append(*_records(partition, range(max(0, start - 2), start + 5)))  # overlapping replays
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = _stored(tmp_path)
    assert len(stored) == 4 * 50 == log.count() and not stored.duplicated().any()


def test_a_key_twice_in_a_batch_keeps_its_last_row_and_the_schema_order(tmp_path):
    log = OfflineLog(tmp_path, KEY, SCHEMA)
    df = _frame([("a", 1, 0), ("b", 2, 0), ("a", 1, 1)])[["label", "timestamp", "user_id"]]  # columns shuffled
    assert log.append(df, [("t", 0, 0), ("t", 0, 1), ("t", 0, 2)]) == 2
    stored = _stored(tmp_path)
    assert list(stored.columns) == SCHEMA.names
    assert stored.sort_values("user_id")["label"].tolist() == [1, 0]


def test_rows_without_a_source_are_named_by_their_keys_so_a_retry_rewrites_nothing(tmp_path):
    log = OfflineLog(tmp_path, KEY, SCHEMA)
    assert log.append(_frame([("a", 1, 0), ("b", 2, 0)])) == 2
    assert log.append(_frame([("b", 2, 0), ("a", 1, 0)])) == 0
    assert log.count() == 2


def test_a_failed_write_leaves_nothing_and_its_retry_writes(tmp_path, monkeypatch):
    log = OfflineLog(tmp_path, KEY, SCHEMA)
    assert log.append(*_records(0, [0])) == 1

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(offline_module.pq, "write_table", broken)
        with pytest.raises(OSError, match="disk full"):
            log.append(*_records(0, [1, 2]))
    assert log.count() == 1 and log.written_upto() == {("interactions", 0): 0}
    assert log.append(*_records(0, [1, 2])) == 2
    assert log.count() == 3 and len(_stored(tmp_path)) == 3


def test_the_trainer_reads_only_its_window_pushed_into_the_scan(tmp_path) -> None:
    """read_interaction_logs(since_ms=...) gives exactly the rows of the full read inside the
    window (the filter runs in pyarrow's Parquet scan, not on a full frame)."""
    from streams.sinks.interaction_log import InteractionLog
    from trainer.dataset import read_interaction_logs

    records = [{"user_id": f"u{i % 7}", "track_id": f"t{i}", "event_time": 1_000 + 10 * i, "label": i % 2} for i in range(300)]
    for start in range(0, 300, 100):  # three part files
        InteractionLog(tmp_path).write(records[start : start + 100])
    full = read_interaction_logs(tmp_path)
    window = read_interaction_logs(tmp_path, since_ms=2_000)
    expected = full[full["timestamp"] >= 2_000].sort_values("timestamp").reset_index(drop=True)
    assert len(window) == 200
    pd.testing.assert_frame_equal(window.sort_values("timestamp").reset_index(drop=True), expected)
