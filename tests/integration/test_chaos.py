"""Faults against the real broker and Feast store with a paced producer: nothing lost, nothing
duplicated, every SID equal to a clean run's, every bad record dead-lettered once."""

from __future__ import annotations

import pytest

from tests.plugins.chaos import N_BAD, RATE, assert_nothing_lost, chaos_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def chaos_env_single(kafka_broker, tmp_path_factory):
    return chaos_env(kafka_broker.settings, tmp_path_factory.mktemp("chaos"))


@pytest.mark.parametrize("fault", ["kill-assigner", "kill-writer", "feast-down"])
def test_fault_loses_and_duplicates_nothing(chaos_env_single, fault):
    from sidstream.chaos import run_chaos

    s, tracks, clean, root = chaos_env_single
    r = run_chaos(s, fault, tracks, N_BAD, RATE, root / "runs" / fault, clean, timeout_s=240)
    assert_nothing_lost(r)
