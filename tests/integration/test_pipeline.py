"""End to end on real components: Kafka broker, worker processes (Faust), the shipped MiniLM,
the log-mel audio encoder, a PSRQ codebook artifact from the registry, a real Feast repo."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from encoders.catalog import track_text
from sidcore.catalog import audio_tracks, lastfm_tracks
from sidstream.harness import PipelineRun, wait_until_readable
from streams import avro_codec
from tests.plugins.paths import AUDIO_DIR

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def pipeline(test_settings, tmp_path):
    """A registered codebook version fitted on 300 sample artists and 3 recordings' windows."""
    from encoders import load_audio_encoder, load_text_encoder
    from encoders.catalog import audio_windows
    from trainer.jobs import bootstrap_codebooks

    if not AUDIO_DIR.is_dir():
        pytest.skip(f"{AUDIO_DIR} missing: apt-get install singularity-music")
    te = load_text_encoder()
    ae = load_audio_encoder(test_settings.encoders.audio_model)
    catalog = lastfm_tracks(None, 300)  # the shipped sample
    audio = audio_tracks(AUDIO_DIR, 3)
    text_X = te.encode([track_text(t) for t in catalog])
    audio_X, owners = audio_windows([t.audio_path for t in audio], ae, 10.0)
    audio_text_X = te.encode([track_text(audio[i]) for i in owners.tolist()])
    s = test_settings.model_copy(update={"codebook": test_settings.codebook.model_copy(update={"codebook_size": 16})})
    version = bootstrap_codebooks(s, text_X, te.model_id, audio_X, audio_text_X, ae.model_id)
    run = PipelineRun(s, tmp_path / "run")
    run.create_topics()
    yield run, catalog, audio, version
    run.stop_workers()


def _open_store(run):
    from streams.sinks.store import open_store

    return open_store(run.settings.feast_dir)


def test_tracks_in_rows_out_with_dlq_and_late_audio(pipeline):
    from psrq import load_codebook_set
    from streams.sinks.reader import read_sids

    run, catalog, audio, version = pipeline
    tracks = catalog[:40]
    run.start_workers()
    producer = run.producer()
    produced = producer.send_metadata(tracks + audio)
    producer.send_raw(run.names.metadata, b"bad-1", b"\x00\x01 not avro")
    ts = int(time.time() * 1000)
    producer.send_raw(
        run.names.metadata, b"bad-2",
        avro_codec.encode("TrackMetadata", {"track_id": "bad-2", "event_time": ts, "text": "  ", "ingest_time": ts}),
    )  # fmt: skip
    producer.flush()
    store = _open_store(run)
    # text SIDs first, audio not sent yet
    lat = wait_until_readable(store, {t.track_id: "text_sid" for t in tracks + audio}, produced, 120, version.version)
    assert len(lat) == len(tracks) + len(audio)
    before = read_sids(store, [t.track_id for t in audio], version.version)
    assert before["joint_sid"].isna().all() or all(v is None for v in before["joint_sid"])
    producer.send_audio(audio, produced)  # the late modality
    producer.flush()
    lat2 = wait_until_readable(store, {t.track_id: "joint_sid" for t in audio}, produced, 120, version.version)
    assert len(lat2) == len(audio)

    cs = load_codebook_set(version.path)
    df = read_sids(store, [t.track_id for t in tracks + audio], version.version).set_index("track_id")
    for modality in ("text", "joint"):
        ids = [t.track_id for t in (tracks + audio if modality == "text" else audio)]
        codes = np.array([list(v) for v in df.loc[ids, f"{modality}_sid"]])
        sizes = np.array(cs.codebooks[modality].codebook_sizes)
        assert codes.shape == (len(ids), len(sizes))
        assert (codes >= 0).all() and (codes < sizes).all()
    # the IDs in Feast are the frozen codebook's semantic layers for these texts followed by the
    # identity codes the claims log gave each track; no two tracks share one
    from encoders import load_text_encoder

    ids_text = [t.track_id for t in tracks]
    expected = _registry_ids(run, cs, version.version, ids_text, load_text_encoder().encode([track_text(t) for t in tracks]))
    got = np.array([list(v) for v in df.loc[ids_text, "text_sid"]])
    np.testing.assert_array_equal(got, expected)
    assert len({tuple(v) for v in df["text_sid"]}) == len(df)
    assert set(df.loc[[t.track_id for t in audio], "codebook_version"]) == {version.version}

    dead = run.dead_letters()
    meta_dlq = dead[run.names.name("tracks.metadata.dlq")]
    assert sorted(r["error_type"] for r in meta_dlq) == ["empty_text", "undecodable"]
    assert all(r["reason"] for r in meta_dlq)
    assert any(r["original"] == b"\x00\x01 not avro" for r in meta_dlq)
    assert sum(len(v) for v in dead.values()) == 2


def test_restart_neither_loses_nor_duplicates(pipeline):
    """Kill every worker while tracks are in flight, restart them: every track ends readable
    with SIDs equal to what the frozen codebook gives its text (a clean run's), and the offline
    log holds each row once. (tests/integration/test_chaos.py drills single-role faults.)"""
    from encoders import load_text_encoder
    from psrq import load_codebook_set
    from streams.sinks.reader import read_sids

    run, catalog, _, version = pipeline
    tracks = catalog[:120]
    run.start_workers()
    producer = run.producer()
    produced = producer.send_metadata(tracks[:60])
    producer.flush()
    store = _open_store(run)
    readable = wait_until_readable(store, {t.track_id: "text_sid" for t in tracks[:60]}, produced, 120, version.version,
                                   poll_s=0.01, stop_after=10)
    run.kill_all()  # hard kill: no clean shutdown, no final commit
    in_flight = 60 - len(readable)
    produced |= producer.send_metadata(tracks[60:])
    producer.flush()
    run.start_workers()
    lat = wait_until_readable(store, {t.track_id: "text_sid" for t in tracks}, produced, 180, version.version)
    assert len(lat) == len(tracks)
    assert in_flight > 0, "the kill landed after every track was written: it proved nothing"
    df = read_sids(store, [t.track_id for t in tracks], version.version)
    expected = _registry_ids(run, load_codebook_set(version.path), version.version, [t.track_id for t in tracks],
                             load_text_encoder().encode([track_text(t) for t in tracks]))
    np.testing.assert_array_equal(np.array([list(v) for v in df["text_sid"]]), expected)
    assert len({tuple(v) for v in df["text_sid"]}) == len(tracks)
    offline = pd.concat([pd.read_parquet(p) for p in (run.settings.feast_dir / "data" / "offline" / "track_sids").glob("part-*.parquet")])
    assert not offline.duplicated(["track_id", "sid_event_time_ms", "codebook_version"]).any()
    assert set(offline["track_id"]) == {t.track_id for t in tracks}


def _registry_ids(run, cs, version, track_ids, X):
    """What the frozen codebook and the claims log say these tracks' text IDs are."""
    from streams.identity import KafkaIdentities

    q = cs.codebooks["text"]
    if not hasattr(q, "semantic_encode"):
        return cs.encode("text", X)
    reg = KafkaIdentities(run.settings.kafka.bootstrap, run.names.identity)
    try:
        reg.catch_up()
        return reg.held_ids(q, version, "text", track_ids, X)
    finally:
        reg.close()
