"""The machine tables' renderers on recorded JSON lines (the commands themselves need a broker
and minutes; the integration tests and `sidstream results regenerate` run them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidstream.results import specs

LINES = json.loads((Path(__file__).parent / "data" / "machine_table_lines.json").read_text())


@pytest.fixture
def ctx(tmp_path: Path) -> specs.Context:
    return specs.Context(root=tmp_path, out=tmp_path, quick=False, jobs=1, cache_dir=tmp_path, lastfm_dir=None, command="test")


def _recorded(monkeypatch: pytest.MonkeyPatch, key: str) -> list[str]:
    seen: list[str] = []

    def fake(ctx: specs.Context, commands: list[str], env: dict[str, str] | None = None) -> list[tuple[str, dict]]:
        seen.extend(commands)
        assert len(commands) == len(LINES[key])
        return list(zip(commands, LINES[key], strict=True))

    monkeypatch.setattr(specs, "_run_commands", fake)
    return seen


def test_pipeline_table_states_its_goals_as_verdicts(monkeypatch: pytest.MonkeyPatch, ctx: specs.Context) -> None:
    seen = _recorded(monkeypatch, "pipeline")
    r = specs._pipeline(ctx)
    assert seen == specs.PIPELINE_COMMANDS
    # this recorded line predates `polls`: no measured interval, so the poll verdict cannot say yes
    assert r.verdicts == {"paced_p50_under_100ms": "yes", "paced_p99_under_300ms": "yes",
                          "paced_poll_every_10ms_or_less": "no", "demo_all_readable": "yes"}
    assert ("| `bench pipeline --rate 50 --tracks 1500 --poll-ms 8 --poll-max-duty 1 --json` | 186.8 | 49.4 | 0.264 | "
            "95.9 / 180.0 |") in r.markdown
    assert "encode 57 / 115; assign 9 / 18; write_and_read 29 / 69 | 100 tracks: 211 / 351 |" in r.markdown
    assert "| none |" in r.markdown  # the burst line was recorded without a warm-up
    assert r.markdown.count("```") == 2 * len(specs.PIPELINE_COMMANDS)  # every JSON line kept verbatim
    paced = LINES["pipeline"][2]
    try:
        for interval, verdict in ((8.5, "yes"), (10.0, "yes"), (12.3, "no")):
            LINES["pipeline"][2] = {**paced, "polls": {"count": 3000, "mean_interval_ms": interval}}
            assert specs._pipeline(ctx).verdicts["paced_poll_every_10ms_or_less"] == verdict
    finally:
        LINES["pipeline"][2] = paced


def test_reliability_table_counts_every_drill_and_flags_a_loss(monkeypatch: pytest.MonkeyPatch, ctx: specs.Context) -> None:
    _recorded(monkeypatch, "reliability")
    r = specs._reliability(ctx)
    assert r.verdicts == {"nothing_lost": "yes", "soak_rss_ratio_within_1.1": "yes", "soak_join_table_within_bound": "yes"}
    for fault in ("kill-encoder", "kill-assigner", "kill-writer", "kill-broker", "feast-down", "slow-encoder"):
        assert f"| {fault} | " in r.markdown
    LINES["reliability"][1] = {**LINES["reliability"][1], "lost": 3}
    try:
        assert specs._reliability(ctx).verdicts["nothing_lost"] == "no"
    finally:
        LINES["reliability"][1] = {**LINES["reliability"][1], "lost": 0}


def test_throughput_table(monkeypatch: pytest.MonkeyPatch, ctx: specs.Context) -> None:
    _recorded(monkeypatch, "throughput")
    r = specs._throughput(ctx)
    assert "| din | 45,001 | 830,446 |" in r.markdown and "MCCA / DIN: 0.4" in r.markdown
    assert "no CUDA device" in r.markdown


def test_a_failing_table_keeps_its_old_block_and_the_others_are_written(monkeypatch: pytest.MonkeyPatch,
                                                                         ctx: specs.Context) -> None:
    def fake(ctx: specs.Context, commands: list[str], env: dict[str, str] | None = None) -> list[tuple[str, dict]]:
        if commands[0].startswith("sidstream demo"):
            raise RuntimeError("sidstream demo --json failed (exit 1): no audio codebook")
        return list(zip(commands, LINES["throughput"], strict=True))

    monkeypatch.setattr(specs, "_run_commands", fake)
    ctx.root = Path(__file__).resolve().parents[3]  # fingerprints of the real sources
    with pytest.raises(specs.RegenerationError) as err:
        specs.regenerate(ctx, [specs.TABLES["pipeline"], specs.TABLES["lastfm-throughput"]])
    assert list(err.value.failed) == ["pipeline"] and "no audio codebook" in err.value.failed["pipeline"]
    assert "lastfm-throughput" in err.value.timings
    assert (ctx.out / "lastfm.md").is_file() and not (ctx.out / "pipeline.md").exists()
