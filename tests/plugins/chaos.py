"""What the chaos drills' tests share: one prepared environment (settings on a given Kafka, live
codebooks, the tracks, a clean run's SIDs to compare with) and the one verdict every drill must
meet. A helper module, not a fixture plugin: test_chaos and test_cluster make their own
module-scoped fixtures from it, on the single broker and on the cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidcore.config import KafkaSettings, Settings

N_TRACKS, N_BAD, RATE = 240, 12, 400.0


def chaos_env(kafka: KafkaSettings, root: Path) -> tuple[Settings, list[Any], dict[str, list[int]], Path]:
    """(settings, tracks, clean run's final text SIDs, root) for drills on `kafka`."""
    from sidcore.catalog import lastfm_tracks
    from sidstream.chaos import clean_run_codes
    from trainer.bootstrap import ensure_codebooks

    s = Settings(
        home=root / "home", kafka=kafka, lastfm_dir="sample",
        stream={"batch_size": 32, "batch_timeout_s": 0.05, "session_timeout_s": 6.0, "retry_budget_s": 90.0},
        codebook={"codebook_size": 16},
    )  # fmt: skip
    ensure_codebooks(s, [])
    tracks = lastfm_tracks(None, N_TRACKS)
    clean = clean_run_codes(s, tracks, RATE, root / "runs")
    assert len(clean) == N_TRACKS
    return s, tracks, clean, root


def assert_nothing_lost(r: dict[str, Any]) -> None:
    """A third of the tracks in flight at the fault, and after it: nothing lost, no final row
    twice, no SID changed, no ID shared, every bad record dead-lettered once."""
    summary = {k: v for k, v in r.items() if k != "codes"}
    print(summary)
    assert r["in_flight_at_fault"] >= N_TRACKS / 3, summary
    assert r["lost"] == 0, summary
    assert r["duplicated_final"] == 0 and r["duplicate_offline_rows"] == 0, summary
    assert r["mismatched"] == 0, summary
    assert r["shared_ids"] == 0, summary
    assert r["dlq"] == r["bad_injected"] == N_BAD, summary
