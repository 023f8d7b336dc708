"""Embeddings computed outside the pipeline (your own encoder) as Embedding records: the records
a producer sends (streams.producer.embedding_records) and what it refuses before sending anything.
The records' trip through the broker and the assigner: tests/integration/test_own_audio_encoder.py."""

import time

import numpy as np
import pytest
from click.testing import CliRunner

from sidcore.config import Settings, use_settings
from sidstream.commands.produce import produce
from streams import avro_codec
from streams.producer import TrackProducer, checked_embeddings, embedding_records
from streams.records import vector_from_bytes

pytestmark = pytest.mark.unit


def test_records_carry_each_row_under_its_track_and_the_given_model_id():
    X = np.random.default_rng(0).normal(size=(3, 5))  # float64: sent as float32
    records = embedding_records("audio", ["a", "b", "c"], X, "own-encoder/v1", 1_000, ingest_times={"b": 900})
    assert [k for k, _ in records] == [b"a", b"b", b"c"]
    decoded = [avro_codec.decode(v, expected="Embedding")[1] for _, v in records]
    assert [r["track_id"] for r in decoded] == ["a", "b", "c"]
    assert {r["modality"] for r in decoded} == {"audio"} and {r["model_id"] for r in decoded} == {"own-encoder/v1"}
    assert {r["dim"] for r in decoded} == {5} and {r["event_time"] for r in decoded} == {1_000}
    assert [r["ingest_time"] for r in decoded] == [1_000, 900, 1_000]
    for r, row in zip(decoded, X, strict=True):
        np.testing.assert_array_equal(vector_from_bytes(r["vector"], r["dim"]), row.astype(np.float32))


@pytest.mark.parametrize(("modality", "ids", "X", "model_id", "dim", "message"), [
    ("audio", ["a", "b"], np.array([[0.0, 1.0], [np.nan, 0.0]]), "m", None, "1 audio embedding(s) with NaN/inf (or beyond float32), the first for track 'b'"),
    ("audio", ["a", "b"], np.array([[1e300, 1.0], [0.0, 0.0]]), "m", None, "the first for track 'a'"),  # inf as float32
    ("audio", ["a"], np.zeros((2, 4)), "m", None, "2 embedding rows for 1 track ids"),
    ("audio", ["a", "b"], np.zeros((2, 4)), "m", 8, "audio embeddings have dim 4, expected 8"),
    ("audio", ["a"], np.zeros(4), "m", None, "2-d array [n, dim], got shape (4,)"),
    ("audio", ["a"], np.zeros((1, 4)), "  ", None, "needs the model id"),
    ("audio", [""], np.zeros((1, 4)), "m", None, "an empty track id"),
    ("image", ["a"], np.zeros((1, 4)), "m", None, "unknown modality 'image'"),
    ("audio", ["a"], np.array([["x", "y"]]), "m", None, "must be numbers"),
])
def test_a_bad_array_is_refused_as_a_whole_naming_the_problem(modality, ids, X, model_id, dim, message):
    with pytest.raises(ValueError) as err:
        embedding_records(modality, ids, X, model_id, 1, dim=dim)
    assert message in str(err.value)


def test_checked_embeddings_are_little_endian_float32_rows():
    V = checked_embeddings("text", ["a", "b"], np.arange(6, dtype=np.int64).reshape(2, 3), "m", dim=3)
    assert V.dtype == np.dtype("<f4") and V.flags.c_contiguous and V.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_producer_without_that_modalitys_topic_refuses_before_sending():
    p = TrackProducer(Settings().kafka, "m", "a", embedding_topics={"text": "embeddings.text"})
    with pytest.raises(ValueError, match="no embeddings topic for 'audio' \\(has: text\\)"):
        p.send_audio_embeddings(["a"], np.zeros((1, 4)), "own/v1")


@pytest.fixture
def no_broker(tmp_path):
    """Settings whose broker is a port nothing listens on: contacting it would fail in ~15 s, not with the file's error."""
    use_settings(Settings(home=tmp_path / "home", kafka={"bootstrap_servers": "127.0.0.1:9"}))
    yield
    use_settings(None)


def test_cli_refuses_a_file_with_nan_rows_in_one_line_before_contacting_a_broker(tmp_path, no_broker):
    X = np.ones((3, 4), dtype=np.float32)
    X[2, 1] = np.inf
    np.save(tmp_path / "own.npy", X)
    (tmp_path / "ids.txt").write_text("t1\nt2\nt3\n")
    started = time.monotonic()
    result = CliRunner().invoke(produce, ["embeddings", "--model-id", "own-encoder/v1", "--npy", str(tmp_path / "own.npy"),
                                          "--ids", str(tmp_path / "ids.txt")])
    assert result.exit_code == 1 and time.monotonic() - started < 5
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 'own.npy'}: 1 audio embedding(s) with NaN/inf (or beyond float32), the first for track 't3'"]
