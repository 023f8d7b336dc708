"""Faults against the real broker and Feast store with a paced producer: nothing lost, nothing
duplicated, every SID equal to a clean run's, every bad record dead-lettered once."""

from __future__ import annotations

import pytest

from sidcore.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TRACKS, N_BAD, RATE = 240, 12, 400.0


@pytest.fixture(scope="module")
def chaos_env(kafka_broker, tmp_path_factory):
    from sidcore.catalog import lastfm_tracks
    from sidstream.chaos import clean_run_codes
    from trainer.bootstrap import ensure_codebooks

    root = tmp_path_factory.mktemp("chaos")
    s = Settings(
        home=root / "home", kafka=kafka_broker.settings, lastfm_dir="sample",
        stream={"batch_size": 32, "batch_timeout_s": 0.05, "session_timeout_s": 6.0, "retry_budget_s": 90.0},
        codebook={"codebook_size": 16},
    )  # fmt: skip
    ensure_codebooks(s, [])
    tracks = lastfm_tracks(None, N_TRACKS)
    clean = clean_run_codes(s, tracks, RATE, root / "runs")
    assert len(clean) == N_TRACKS
    return s, tracks, clean, root


@pytest.mark.parametrize("fault", ["kill-assigner", "kill-writer", "feast-down"])
def test_fault_loses_and_duplicates_nothing(chaos_env, fault):
    from sidstream.chaos import run_chaos

    s, tracks, clean, root = chaos_env
    r = run_chaos(s, fault, tracks, N_BAD, RATE, root / "runs" / fault, clean, timeout_s=240)
    summary = {k: v for k, v in r.items() if k != "codes"}
    print(summary)
    assert r["in_flight_at_fault"] >= N_TRACKS / 3, summary
    assert r["lost"] == 0, summary
    assert r["duplicated_final"] == 0 and r["duplicate_offline_rows"] == 0, summary
    assert r["mismatched"] == 0, summary
    assert r["shared_ids"] == 0, summary
    assert r["dlq"] == r["bad_injected"] == N_BAD, summary
