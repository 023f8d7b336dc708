"""The Feast sink and reader against a real feature repo: SQLite in tmp_path, and a real
redis-server started on a free port for the Redis profile."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from streams.sinks.reader import (
    _RedisHashes,
    read_histories,
    read_histories_async,
    read_history,
    read_sid_columns,
    read_sids,
)
from streams.sinks.store import open_store
from streams.sinks.writer import FeastSink, SidRow, UserHistoryRow
from tests.plugins.redis import redis_command as _redis_command

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def store(request, tmp_path):
    if request.param == "redis":
        url = request.getfixturevalue("redis_server")
        assert _redis_command(int(url.rsplit(":", 1)[1]), b"FLUSHALL\r\n").startswith(b"+OK")
        return open_store(tmp_path / "feast", profile="redis", redis_url=url)
    return open_store(tmp_path / "feast")


def _row(track_id: str, t_ms: int, text=(1, 2, 3), audio=None, joint=None, version="cb-1") -> SidRow:
    return SidRow(track_id, t_ms, version, text, audio, joint, "minilm", "" if audio is None else "logmel")


def _state(store, ids):
    return read_sids(store, ids, "cb-1").to_dict("records")


def _offline_rows(store, view="track_sids") -> pd.DataFrame:
    folder = Path(store.repo_path) / "data" / "offline" / view
    parts = sorted(folder.glob("*.parquet"))
    return pd.concat([pq.read_table(p).to_pandas() for p in parts]) if parts else pd.DataFrame()


def test_rows_in_exact_values_out(store):
    sink = FeastSink(store)
    assert sink.write([_row("t1", 1_000), _row("t2", 1_000, (4, 5, 6), (7, 8, 9), (10, 11, 12))]).online == 2
    df = read_sids(store, ["t2", "unknown", "t1"], "cb-1")
    assert df["track_id"].tolist() == ["t2", "unknown", "t1"]
    t2, unknown, t1 = df.to_dict("records")
    assert t2 == {
        "track_id": "t2", "codebook_version": "cb-1", "text_sid": [4, 5, 6], "audio_sid": [7, 8, 9],
        "joint_sid": [10, 11, 12], "text_sid_str": "4-5-6", "audio_sid_str": "7-8-9", "joint_sid_str": "10-11-12",
        "modalities": "text,audio", "text_model_id": "minilm", "audio_model_id": "logmel",
        "sid_event_time_ms": 1_000, "sid_text_offset": -1, "sid_audio_offset": -1,
    }  # fmt: skip
    assert t1["text_sid"] == [1, 2, 3] and t1["audio_sid"] is None and t1["joint_sid"] is None
    # the poller's read: only the asked features, the same values, in id order
    cols = read_sid_columns(store, ["t2", "unknown", "t1"], "cb-1", ["text_sid", "joint_sid"])
    assert cols == {"text_sid": [[4, 5, 6], None, [1, 2, 3]], "joint_sid": [[10, 11, 12], None, None]}
    assert read_sid_columns(store, [], "cb-1", ["text_sid"]) == {"text_sid": []}
    assert (t1["audio_sid_str"], t1["joint_sid_str"], t1["modalities"]) == ("", "", "text")
    assert unknown["codebook_version"] == "cb-1"  # the key that was asked for
    assert all(v is None or pd.isna(v) for k, v in unknown.items() if k not in ("track_id", "codebook_version"))


def test_stale_event_time_does_not_overwrite(store):
    sink = FeastSink(store)
    sink.write([_row("t1", 5_000, (1, 1, 1))])
    assert sink.write([_row("t1", 4_999, (2, 2, 2)), _row("t1", 5_000, (3, 3, 3))]).online == 0  # older, same instant
    assert read_sids(store, ["t1"], "cb-1")["text_sid"].iloc[0] == [1, 1, 1]
    assert sink.write([_row("t1", 5_001, (4, 4, 4))]).online == 1
    assert read_sids(store, ["t1"], "cb-1")["text_sid"].iloc[0] == [4, 4, 4]


def test_newest_row_per_track_within_one_batch(store):
    sink = FeastSink(store)
    assert sink.write(
        [
            _row("t1", 3_000, (3, 3, 3)),
            _row("t1", 1_000, (1, 1, 1)),
            _row("t2", 1_000),
            _row("t1", 2_000, (2, 2, 2)),
        ]
    ).online == 2
    assert read_sids(store, ["t1"], "cb-1")["text_sid"].iloc[0] == [3, 3, 3]
    assert len(_offline_rows(store)) == 2


def test_replaying_a_batch_gives_the_same_state(store):
    batch = [_row(f"t{i}", 1_000 + i, (i, i + 1, i + 2)) for i in range(20)]
    sink = FeastSink(store)
    assert sink.write(batch).online == 20
    ids = [r.track_id for r in batch]
    before, offline_before = _state(store, ids), _offline_rows(store)
    assert sink.write(batch).online == 0  # a crash before the offset commit: the same records come again
    assert _state(store, ids) == before
    pd.testing.assert_frame_equal(_offline_rows(store), offline_before)


def test_text_only_row_is_upgraded_by_the_full_row(store):
    sink = FeastSink(store)
    sink.write([_row("t1", 1_000, (1, 2, 3))])
    assert read_sids(store, ["t1"], "cb-1")["modalities"].iloc[0] == "text"
    assert sink.write([_row("t1", 2_000, (1, 2, 3), (4, 5, 6), (7, 8, 9))]).online == 1
    got = _state(store, ["t1"])[0]
    assert (got["text_sid"], got["audio_sid"], got["joint_sid"]) == ([1, 2, 3], [4, 5, 6], [7, 8, 9])
    assert (got["joint_sid_str"], got["modalities"], got["audio_model_id"]) == (
        "7-8-9",
        "text,audio",
        "logmel",
    )


def test_offline_parquet_is_appended_and_joinable(store):
    sink = FeastSink(store)
    sink.write([_row("t1", 1_000, (1, 2, 3))])
    sink.write([_row("t1", 2_000, (1, 2, 3), (4, 5, 6), (7, 8, 9)), _row("t2", 2_000)])
    offline = _offline_rows(store).sort_values(["track_id", "event_time"])
    assert offline["track_id"].tolist() == ["t1", "t1", "t2"]
    assert offline["event_time"].dt.tz is not None
    assert [list(v) if v is not None else None for v in offline["joint_sid"]] == [None, [7, 8, 9], None]
    # Feast's own point-in-time join reads the part files
    entity_df = pd.DataFrame(
        {"track_id": ["t1", "t1"], "codebook_version": ["cb-1", "cb-1"],
         "event_timestamp": pd.to_datetime([1_500, 2_500], unit="ms", utc=True)}
    )
    hist = store.get_historical_features(entity_df=entity_df, features=["track_sids:joint_sid_str"]).to_df()
    assert sorted(
        zip(hist["event_timestamp"].astype("int64") // 10**6, hist["joint_sid_str"], strict=True)
    ) == [
        (1_500, ""),
        (2_500, "7-8-9"),
    ]


def test_user_history_round_trip(store):
    sink = FeastSink(store)
    assert sink.write_history([UserHistoryRow("u1", 1_000, ("a", "b")), UserHistoryRow("u2", 1_000, ("c",)),
                               UserHistoryRow("u1", 2_000, ("a", "b", "d"))]).online == 2
    assert sink.write_history([UserHistoryRow("u1", 1_500, ("stale",))]).online == 0
    df = read_history(store, ["u1", "u2", "nobody"])
    assert df["history_item_ids"].tolist()[:2] == [["a", "b", "d"], ["c"]]
    assert df["history_len"].tolist()[:2] == [3, 1]
    assert df["history_item_ids"].iloc[2] is None


def test_read_histories_equals_feasts_get_online_features(store):
    """read_histories reads Redis's hashes directly (one HMGET for one user, a pipeline for
    several) and other stores through their `online_read`, not `get_online_features`: the two give
    the same histories (newest row, order kept, empty and unknown users) on both stores, for one
    user and for several."""
    sink = FeastSink(store)
    sink.write_history([UserHistoryRow("u1", 1_000, ("a", "b")), UserHistoryRow("u2", 1_000, ("c",)),
                        UserHistoryRow("u1", 2_000, ("a", "b", "d")), UserHistoryRow("u3", 1_000, ())])
    users = ["u2", "nobody", "u1", "u3", "u1"]
    ref = store.get_online_features(features=["user_history:history_item_ids"],
                                    entity_rows=[{"user_id": u} for u in users]).to_dict()
    expected = {u: list(h) for u, h in zip(ref["user_id"], ref["history_item_ids"], strict=True) if h is not None}
    got = read_histories(store, users)
    assert got == expected
    assert got["u1"] == ["a", "b", "d"] and got["u2"] == ["c"] and "nobody" not in got
    assert read_histories(store, []) == {}
    for u in users:
        assert read_histories(store, [u]) == ({u: expected[u]} if u in expected else {})

    async def awaited() -> list[dict[str, list[str]]]:  # one event loop: the asyncio client is bound to it
        return [await read_histories_async(store, users), await read_histories_async(store, []),
                *[await read_histories_async(store, [u]) for u in users]]

    many, none, *each = asyncio.run(awaited())
    assert many == expected and none == {}
    assert each == [({u: expected[u]} if u in expected else {}) for u in users]
    # on Redis the reads went through the asyncio client, not the blocking fallback
    assert (_RedisHashes.of(store) is not None) == (store.config.online_store.type == "redis")
    if _RedisHashes.of(store) is not None:
        assert _RedisHashes.of(store)._async is not None


def test_ranker_feature_service_serves_both_views(store):
    sink = FeastSink(store)
    assert sink.write([_row("t1", 1_000, (1, 2, 3))]).online == 1
    assert sink.write_history([UserHistoryRow("u1", 1_000, ("t1",))]).online == 1
    service = store.get_feature_service("ranker_features")
    got = store.get_online_features(
        features=service, entity_rows=[{"track_id": "t1", "codebook_version": "cb-1", "user_id": "u1"}]
    ).to_dict()
    assert got["text_sid_str"] == ["1-2-3"] and got["history_item_ids"] == [["t1"]]


def test_reopening_keeps_data_and_skips_apply(tmp_path):
    store = open_store(tmp_path / "feast")
    sink = FeastSink(store)
    sink.write([_row("t1", 1_000)])
    t0 = time.perf_counter()
    again = open_store(tmp_path / "feast")
    assert time.perf_counter() - t0 < 1.0
    assert read_sids(again, ["t1"], "cb-1")["text_sid"].iloc[0] == [1, 2, 3]
    assert (tmp_path / "feast" / "feature_store.yaml").read_text().count(
        str((tmp_path / "feast").resolve())
    ) == 2


def test_unknown_profile_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown Feast profile"):
        open_store(tmp_path / "feast", profile="dynamo")


def test_a_row_the_store_rejects_is_returned_and_the_rest_is_written(store):
    """One row that can never be written (a code beyond int64) must not block its batch or
    any later one: it comes back in `rejected` for the dead-letter topic."""
    sink = FeastSink(store)
    batch = [_row(f"t{i}", 1_000, (i, i, i)) for i in range(8)]
    batch[5] = _row("t5", 1_000, (2**70, 1, 1))
    result = sink.write(batch)
    assert [r.track_id for r, _ in result.rejected] == ["t5"] and result.online == 7
    assert "t5" not in set(_offline_rows(store)["track_id"])
    assert sink.write([_row("t9", 2_000, (9, 9, 9))]).online == 1  # the next batch is not blocked
    assert read_sids(store, ["t4", "t9"], "cb-1")["text_sid"].tolist() == [[4, 4, 4], [9, 9, 9]]


def test_a_locked_store_is_a_transient_error(tmp_path):
    """A write to a locked SQLite store raises (to be retried, batch un-acked) and leaves no
    offline row behind that a retry would add twice."""
    import sqlite3

    from streams.sinks.store import is_transient_store_error

    store = open_store(tmp_path / "feast")
    sink = FeastSink(store)
    lock = sqlite3.connect(tmp_path / "feast" / "data" / "online.db")
    lock.execute("BEGIN EXCLUSIVE")
    with pytest.raises(Exception) as failure:
        sink.write([_row("t1", 1_000)])
    assert is_transient_store_error(failure.value)
    lock.rollback()
    lock.close()
    assert sink.write([_row("t1", 1_000)]).online == 1
    assert len(_offline_rows(store)) == 1


YEAR_2100 = 4_102_444_800_000


def test_superseded_rows_are_counted_not_dropped_silently(store):
    sink = FeastSink(store)
    sink.write([_row("t1", 5_000)])
    result = sink.write([_row("t1", 4_000, (9, 9, 9)), _row("t2", 1_000), _row("t2", 2_000, (4, 4, 4))])
    assert (result.online, result.superseded) == (1, 2)  # t1 older than stored; t2's first row older than its second
    assert [r["text_sid"] for r in _state(store, ["t1", "t2"])] == [[1, 2, 3], [4, 4, 4]]


def test_a_far_future_row_stored_before_the_policy_loses_to_a_valid_row(store):
    """The writer's own newer-row check decides on both stores (Redis with Feast's skip_dedup),
    and a stored time beyond what the new row's source admits (`valid_until_ms`) counts as no row."""
    sink = FeastSink(store)
    sink.write([_row("poisoned", YEAR_2100, (7, 7, 7))])
    now = 1_765_000_000_000
    stale = sink.write([SidRow("poisoned", now, "cb-1", (1, 1, 1), None, None, "minilm", "")])
    assert stale.online == 0 and stale.superseded == 1  # without a bound, the far-future row still wins
    healed = sink.write([SidRow("poisoned", now, "cb-1", (1, 1, 1), None, None, "minilm", "", valid_until_ms=now + 3_600_000)])
    assert healed.online == 1
    assert _state(store, ["poisoned"])[0]["text_sid"] == [1, 1, 1]
    assert _state(store, ["poisoned"])[0]["sid_event_time_ms"] == now


def test_between_equal_times_the_later_source_record_wins_on_both_stores(store):
    """Ties are decided by the log (the source records' offsets), by the writer's one rule, so
    a same-time content change is followed on SQLite and on Redis alike; a replay changes nothing."""
    sink = FeastSink(store)

    def row(text, text_offset, audio_offset=-1):
        return SidRow("t", 5_000, "cb-1", text, None, None, "minilm", "", text_offset, audio_offset)

    assert sink.write([row((1, 1, 1), 10)]).online == 1
    assert sink.write([row((2, 2, 2), 11)]).online == 1  # same time, later text record: the change is followed
    assert sink.write([row((2, 2, 2), 11)]).superseded == 1  # a replay
    assert sink.write([row((1, 1, 1), 10)]).superseded == 1  # the earlier record, late
    assert sink.write([row((3, 3, 3), 11, 4)]).online == 1  # same text record, audio joined at the same time
    both = sink.write([row((4, 4, 4), 12), row((5, 5, 5), 13)])  # two in one batch: the later one
    assert (both.online, both.superseded) == (1, 1)
    state = _state(store, ["t"])[0]
    assert (state["text_sid"], state["sid_text_offset"], state["sid_event_time_ms"]) == ([5, 5, 5], 13, 5_000)
    assert len(_offline_rows(store)) == 4  # every written row once offline; replays and losers not at all
