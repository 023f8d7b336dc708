"""`wait_until_readable`'s poll: every `poll_s` while reads are short, and no more than
`max_duty` of the time busy while reads are long (a burst's thousands of pending tracks), so
the measuring process does not take the cores of the pipeline it measures. The Feast read is
replaced by a fake at its typed boundary (`read_sid_columns`: ids -> one value per id and feature)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.unit


def _fake_reads(monkeypatch: pytest.MonkeyPatch, read_s: float, ready_after_s: float) -> list[float]:
    import streams.sinks.reader as feast

    calls: list[float] = []
    start = time.monotonic()

    def read_sid_columns(store, ids, version, features):
        calls.append(time.monotonic())
        time.sleep(read_s)
        ready = time.monotonic() - start >= ready_after_s
        return {f: [[1, 2, 3] if ready else None for _ in ids] for f in features}

    monkeypatch.setattr(feast, "read_sid_columns", read_sid_columns)
    return calls


def test_short_reads_poll_at_poll_s(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidstream.harness import wait_until_readable

    calls = _fake_reads(monkeypatch, read_s=0.0, ready_after_s=0.4)
    polls: dict[str, float] = {}
    lat = wait_until_readable(None, {"a": "text_sid", "b": "text_sid"}, {"a": 0, "b": 0}, 5, "v", poll_s=0.01, polls=polls)
    assert set(lat) == {"a", "b"}
    assert polls["count"] == len(calls) >= 10  # ~40 at 10 ms; 10 even on a loaded machine
    assert polls["mean_interval_ms"] < 40


def test_long_reads_keep_the_poller_under_its_duty(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidstream.harness import wait_until_readable

    calls = _fake_reads(monkeypatch, read_s=0.03, ready_after_s=0.6)
    polls: dict[str, float] = {}
    lat = wait_until_readable(None, {"a": "text_sid"}, {"a": 0}, 5, "v", poll_s=0.01, max_duty=0.2, polls=polls)
    assert set(lat) == {"a"}
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert gaps and min(gaps) >= 0.03 / 0.2 * 0.9  # read 30 ms + wait 120 ms: busy at most 20%
    assert polls["mean_interval_ms"] >= 135


def test_the_poll_period_includes_the_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads start every poll_s (a period), not poll_s after the last read ended; with
    max_duty 1 a read's cost never stretches the period."""
    from sidstream.harness import wait_until_readable

    calls = _fake_reads(monkeypatch, read_s=0.02, ready_after_s=0.5)
    wait_until_readable(None, {"a": "text_sid"}, {"a": 0}, 5, "v", poll_s=0.05, max_duty=1.0)
    gaps = sorted(b - a for a, b in zip(calls, calls[1:], strict=False))
    assert len(gaps) >= 5
    assert gaps[len(gaps) // 2] < 0.065  # ~50 ms; a pause after each read would make it >= 70 ms


def test_max_duty_must_be_a_share(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidstream.harness import wait_until_readable

    _fake_reads(monkeypatch, read_s=0.0, ready_after_s=0.0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="max_duty"):
            wait_until_readable(None, {"a": "text_sid"}, {"a": 0}, 1, "v", max_duty=bad)


def test_late_wake_ups_do_not_stretch_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a busy machine the poller wakes late; the fixed-rate schedule takes that out of the
    next wait, so the mean interval stays at poll_s (a pause of poll_s would give poll_s + 10 ms)."""
    import sidstream.harness as harness

    calls = _fake_reads(monkeypatch, read_s=0.0, ready_after_s=0.6)
    real_sleep = time.sleep

    def late_sleep(seconds: float) -> None:
        real_sleep(seconds + 0.01 if seconds > 0 else 0)

    monkeypatch.setattr(harness.time, "sleep", late_sleep)
    polls: dict[str, float] = {}
    harness.wait_until_readable(None, {"a": "text_sid"}, {"a": 0}, 5, "v", poll_s=0.03, max_duty=1.0, polls=polls)
    assert len(calls) >= 10
    assert polls["mean_interval_ms"] < 36  # ~30 ms; 40 if each late wake-up were carried
