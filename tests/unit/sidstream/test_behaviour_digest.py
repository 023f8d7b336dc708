"""The behaviour digest (sidstream.results.digest): a source change that keeps the probes' outputs
keeps a results table current; one that changes them (a changed default) makes it stale.

The two end-to-end tests copy the packages and docs/results into a temporary checkout, edit the
copy, and run `sidstream.results.specs.check` on it: the probes run in a fresh process with the
copy first on the path, as `sidstream results check` does in CI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from sidstream.results import digest
from sidstream.results.specs import TABLES, check

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("psrq", "trainer", "sidstream", "sidcore", "streams", "encoders", "feature_repo")


def test_flatten_leaves_out_timings_and_keeps_paths() -> None:
    flat = digest.flatten({"a": {"b": [1, 2.5], "fit_s": 3.0, "online_ms": {"p50": 1}}, "wall_s": 9, "name": "x"})
    assert flat == {"a.b.0": 1, "a.b.1": 2.5, "name": "x"}


def test_differences_tolerate_last_bits_not_real_changes() -> None:
    rec = {"p": {"auc": 0.61234567, "codes": 50, "name": "psrq"}}
    assert digest.differences(rec, {"p": {"auc": 0.61234571, "codes": 50, "name": "psrq"}}, ["p"]) == []
    changed = digest.differences(rec, {"p": {"auc": 0.6150, "codes": 49, "name": "psrq"}}, ["p"])
    assert [d.split(":")[0] for d in changed] == ["p.auc", "p.codes"]
    assert digest.differences(rec, {"p": {"auc": 0.61234567, "codes": 50}}, ["p"]) == ["p.name: 'psrq' -> 'absent'"]
    assert digest.differences(rec, {}, ["p"]) == ["p: not computed"]


def test_every_checked_table_has_probes_and_a_recorded_digest() -> None:
    record = digest.Record.read(ROOT / "docs" / "results")
    for t in TABLES.values():
        if t.machine_bound:
            continue
        assert t.probes, t.name
        assert set(t.probes) <= set(digest.PROBES), t.name
        assert set(record.probes_of(t.name)) == set(t.probes), f"{t.name}: no digest recorded (sidstream results digest --record)"


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / "docs" / "results", root / "docs" / "results")
    return root


def _edit(path: Path, pattern: str, repl: str) -> None:
    text = path.read_text(encoding="utf-8")
    new, n = re.subn(pattern, repl, text)
    assert n > 0, f"{pattern!r} not in {path}"
    path.write_text(new, encoding="utf-8")


def test_a_rename_keeps_the_table_current(checkout: Path) -> None:
    """Renaming a helper the quantizers use (in every psrq module that names it) changes the code
    fingerprint of the quantizer table, and the digest vouches for it."""
    for path in (checkout / "psrq").glob("*.py"):
        if "subsample" in path.read_text(encoding="utf-8"):
            _edit(path, r"\bsubsample\b", "draw_fit_rows")
    problems, notes = check(checkout, checkout / "docs" / "results", None, only=("quantizers",))
    assert problems == []
    assert any("behaviour digest" in n and "unchanged" in n for n in notes), notes


def test_a_changed_default_makes_the_table_stale(checkout: Path) -> None:
    """Changing the k-means iteration default moves the quantizers' numbers: stale, naming a value."""
    _edit(checkout / "psrq" / "kmeans_common.py", r"DEFAULT_NITER = 20\b", "DEFAULT_NITER = 3")
    problems, _ = check(checkout, checkout / "docs" / "results", None, only=("quantizers",))
    assert len(problems) == 1 and "behaviour changed" in problems[0].problem, problems


def test_a_rendering_change_is_stale_without_running_probes(checkout: Path) -> None:
    """The sources the probes cannot see (the table's own rendering) must stay byte-equal."""
    path = checkout / "sidstream" / "results" / "quantizers.py"
    path.write_text(path.read_text(encoding="utf-8") + "\n# an edit\n", encoding="utf-8")
    problems, _ = check(checkout, checkout / "docs" / "results", None, only=("quantizers",))
    assert len(problems) == 1 and "cannot see changed" in problems[0].problem, problems
