"""Unique IDs in the stream with two assigners on one topic (real broker): one leaves mid-stream
(a rebalance), yet no ID is handed out twice; a re-sent track keeps its ID; and a full replay
by a fresh assigner group gives every track the same ID again."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from psrq.identity import IdentityPSRQ
from sidcore.config import Settings, dump_settings
from sidcore.registry import Registry
from sidstream.harness import PipelineRun, read_topics
from streams import avro_codec
from streams.records import vector_to_bytes
from trainer.jobs import register_codebook_set

pytestmark = pytest.mark.integration

N = 600
DIM = 32


def _embedding(track: str, vec: np.ndarray, t: int) -> bytes:
    return avro_codec.encode("Embedding", {"track_id": track, "event_time": t, "modality": "text", "model_id": "m",
                                           "dim": DIM, "vector": vector_to_bytes(vec), "ingest_time": t})


def _spawn(settings: Settings, run_dir: Path, name: str, app_id: str) -> subprocess.Popen[bytes]:
    settings_file = dump_settings(settings, run_dir / f"{name}.json")
    log = open(run_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
    cmd = [sys.executable, "-m", "sidstream.cli", "--settings", str(settings_file), "--log-level", "INFO", "worker", "run",
           "--roles", "assigner", "--app-id", app_id, "--ready-file", str(run_dir / f"{name}.ready")]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_ready(run_dir: Path, procs: dict[str, subprocess.Popen[bytes]], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not all((run_dir / f"{n}.ready").exists() for n in procs):
        for n, p in procs.items():
            assert p.poll() is None, (run_dir / f"{n}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "assigners not ready"
        time.sleep(0.2)


def _sids_by_track(run: PipelineRun, want: int, timeout_s: float = 180) -> dict[str, set[tuple[int, ...]]]:
    """Every track's IDs on sids.assigned, once at least `want` records name all N tracks
    (a rebalance may re-emit records, so the record count alone does not mean every track is in)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = run.assigned()
        by_track: dict[str, set[tuple[int, ...]]] = defaultdict(set)
        for r in records:
            by_track[r["track_id"]].add(tuple(r["text_sid"]))
        if (len(records) >= want and len(by_track) >= N) or time.monotonic() > deadline:
            return by_track
        time.sleep(1.0)


def test_two_assigners_with_a_rebalance_never_share_an_id_and_replays_agree(test_settings: Settings, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, DIM)) * 3
    X = (centres[rng.integers(0, 6, N)] + rng.standard_normal((N, DIM))).astype(np.float32)
    run = PipelineRun(test_settings, tmp_path / "run")
    run.create_topics()
    base = run.worker_settings.model_copy(update={"registry_root": tmp_path / "registry"})
    q = IdentityPSRQ([8, 8], seed=0).fit(X)
    assert len(np.unique(q.semantic_encode(X), axis=0)) < N // 4  # few buckets: assigners compete in them
    register_codebook_set(Registry(base.registry_dir), {"text": q}, {"test": "identity"}, True)

    run_dir = tmp_path / "run"
    group = f"{run.prefix}assigners"
    procs = {name: _spawn(base.model_copy(update={"home": tmp_path / name}), run_dir, name, group) for name in ("a", "b")}
    try:
        _wait_ready(run_dir, procs)
        p = Producer({"bootstrap.servers": test_settings.kafka.bootstrap, "linger.ms": 5})
        now = int(time.time() * 1000)
        for i in range(N):
            p.produce(run.names.emb_text, key=f"t{i:04d}".encode(), value=_embedding(f"t{i:04d}", X[i], now + i))
            if i == N // 3:
                p.flush(30)
                time.sleep(2.0)  # both assigners are mid-stream
                procs["b"].terminate()  # b leaves the group: its partitions move to a
            if i % 50 == 0:
                p.flush(30)
                time.sleep(0.2)
        # re-send 50 tracks unchanged (newer event time): they keep their IDs
        for i in range(0, N, 12):
            p.produce(run.names.emb_text, key=f"t{i:04d}".encode(), value=_embedding(f"t{i:04d}", X[i], now + 10 * N + i))
        p.flush(30)
        assert procs["b"].wait(timeout=60) == 0
        t_wait = time.monotonic()
        first = _sids_by_track(run, N + N // 12)
        assert len(first) == N, (f"{len(first)} of {N} tracks got an ID after {time.monotonic() - t_wait:.0f} s "
                                 f"({len(run.assigned())} records); a: {(run_dir / 'a.log').read_text()[-1500:]}")
        changed = {t: s for t, s in first.items() if len(s) != 1}
        assert not changed, f"tracks whose ID changed: {list(changed.items())[:5]}"
        ids = {t: next(iter(s)) for t, s in first.items()}
        assert len(set(ids.values())) == N, "an ID was handed out twice"
        assert all(len(sid) == 4 for sid in ids.values())  # 2 semantic + 2 identity codes

        claims = read_topics(test_settings.kafka.bootstrap, [run.names.identity], "IdentityClaim")[run.names.identity]
        assert len({c["claimer"] for c in claims}) == 2, "both assigners handed out IDs"

        # a full replay: a fresh group with fresh local state re-reads both topics from the start
        before = len(run.assigned())
        replay = {"c": _spawn(base.model_copy(update={"home": tmp_path / "c"}), run_dir, "c", f"{run.prefix}replay")}
        procs.update(replay)
        _wait_ready(run_dir, replay)
        # (it restores embeddings.kept first, so the re-sent versions stand and the originals are skipped as older)
        again = _sids_by_track(run, before + N)
        assert len(run.assigned()) >= before + N
        assert all(again[t] == {ids[t]} for t in ids), "a replay changed an ID"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
