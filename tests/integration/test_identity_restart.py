"""An assigner's identity claims on disk (streams.state.identity_store) against the real broker:
a restart reads only the claims made since it stopped (counted), and decides as a reader that
read the whole topic."""

from __future__ import annotations

import numpy as np
import pytest

from sidstream.harness import PipelineRun
from streams.identity import KafkaIdentities

pytestmark = pytest.mark.integration


def _resolve(reg: KafkaIdentities, tracks: list[str], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prefixes = rng.integers(0, 3, size=(len(tracks), 2))
    out, failed = reg.resolve("v1", "text", 256, tracks, prefixes, rng.random((len(tracks), 256)).astype(np.float32))
    assert not failed
    return out


def test_a_restart_reads_only_the_tail_and_decides_the_same(test_settings, tmp_path) -> None:
    run = PipelineRun(test_settings, tmp_path / "run")
    run.create_topics()
    bootstrap, topic, state = test_settings.kafka.bootstrap, run.names.identity, tmp_path / "state"
    first = KafkaIdentities(bootstrap, topic, state_dir=state)
    first.catch_up()
    _resolve(first, [f"a{i}" for i in range(200)], 0)
    first.close()  # the assigner stops
    other = KafkaIdentities(bootstrap, topic)  # another assigner claims meanwhile
    other.catch_up()
    _resolve(other, [f"b{i}" for i in range(30)], 1)
    other.close()
    again = KafkaIdentities(bootstrap, topic, state_dir=state)  # the restart, on its own file
    assert again.store.path == first.store.path
    again.catch_up()
    assert again.claims_read == 30  # only the tail: not the 200 it had applied before it stopped
    whole = KafkaIdentities(bootstrap, topic)  # a fresh reader of the whole log
    whole.catch_up()
    assert whole.claims_read == 230
    tracks = [f"a{i}" for i in range(200)] + [f"b{i}" for i in range(30)]
    for bucket in [(b0, b1) for b0 in range(3) for b1 in range(3)]:
        mine, theirs = again.existing("v1", "text"), whole.existing("v1", "text")
        assert [mine.held(bucket, t) for t in tracks] == [theirs.held(bucket, t) for t in tracks]
    again.close()
    whole.close()
