"""The results machinery's parts: generated blocks and claims, paired statistics, fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from sidstream.results.blocks import BlockError, read_blocks, read_claims, write_block
from sidstream.results.fingerprint import source_fingerprint
from sidstream.results.stats import holm, interval, paired, verdict


def test_write_block_appends_then_replaces_and_keeps_the_reading(tmp_path: Path) -> None:
    doc = tmp_path / "t.md"
    doc.write_text("# T\n\nReading before. <!-- claim a:x = better -->\n")
    write_block(doc, "a", {"verdicts": {"x": "better"}}, "| one |", "T")
    write_block(doc, "b", {"verdicts": {}}, "| two |", "T")
    write_block(doc, "a", {"verdicts": {"x": "level"}}, "| one, again |", "T")
    text = doc.read_text()
    blocks = read_blocks(text)
    assert list(blocks) == ["a", "b"]
    assert "one, again" in blocks["a"].body and "| one |" not in text
    assert blocks["a"].meta["verdicts"] == {"x": "level"}
    assert text.startswith("# T\n\nReading before.")  # hand-written text untouched
    assert [(c.table, c.verdict, c.value, c.line) for c in read_claims(text)] == [("a", "x", "better", 3)]


def test_claims_inside_a_block_are_not_reading(tmp_path: Path) -> None:
    doc = tmp_path / "t.md"
    write_block(doc, "a", {}, "<!-- claim a:x = better -->", "T")
    assert read_claims(doc.read_text()) == []


def test_a_block_without_meta_or_twice_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BlockError, match="no results:meta"):
        read_blocks("<!-- results:begin a -->\nx\n<!-- results:end a -->")
    doc = tmp_path / "t.md"
    block = "<!-- results:begin a -->\n<!-- results:meta {} -->\n<!-- results:end a -->\n"
    doc.write_text(block + block)
    with pytest.raises(BlockError, match="2 times"):
        write_block(doc, "a", {}, "x", "T")


def test_paired_matches_scipy_and_the_interval_covers_the_mean() -> None:
    rng = np.random.default_rng(0)
    a = 0.75 + 0.01 * rng.normal(size=10)
    b = a - 0.02 + 0.005 * rng.normal(size=10)
    st = paired(a, b)
    assert st["p"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert st["p_wilcoxon"] == pytest.approx(sps.wilcoxon(a - b).pvalue)
    assert st["ci_low"] < st["mean_diff"] < st["ci_high"] and st["ci_low"] > 0
    assert st["wins"] + st["losses"] == 10
    mean, low, high = interval(a - b)
    half = sps.t.ppf(0.975, 9) * np.std(a - b, ddof=1) / np.sqrt(10)
    assert (low, high) == pytest.approx((mean - half, mean + half))


def test_identical_runs_are_level_and_a_constant_shift_is_not() -> None:
    a = np.array([0.7, 0.71, 0.72])
    same = paired(a, a.copy())
    assert same["identical"] and same["p"] == 1.0 and verdict(same["mean_diff"], same["p"]) == "level"
    shifted = paired(a + 0.01, a)
    assert verdict(shifted["mean_diff"], shifted["p"]) == "better"
    assert verdict(-0.01, 0.001) == "worse" and verdict(0.05, 0.2) == "level"


def test_holm_is_step_down_and_monotone() -> None:
    p = [0.01, 0.04, 0.03, 0.5]
    # sorted 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> max(0.09, 0.08)=0.09, 0.5*1=0.5
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8 capped at 1, then monotone


def test_source_fingerprint_follows_content_not_unrelated_files(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "other.py").write_text("y = 1\n")
    fp, n = source_fingerprint(tmp_path, ("pkg/*.py",))
    assert n == 1
    (tmp_path / "other.py").write_text("y = 2\n")
    assert source_fingerprint(tmp_path, ("pkg/*.py",))[0] == fp  # unrelated edit
    (tmp_path / "pkg" / "a.py").write_text("x = 1\r\n")
    assert source_fingerprint(tmp_path, ("pkg/*.py",))[0] == fp  # line endings of a Windows checkout
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert source_fingerprint(tmp_path, ("pkg/*.py",))[0] != fp
    assert source_fingerprint(tmp_path, ("pkg/*.py",), extra="settings")[0] != source_fingerprint(tmp_path, ("pkg/*.py",))[0]
    with pytest.raises(FileNotFoundError):
        source_fingerprint(tmp_path, ("nothing/*.py",))
