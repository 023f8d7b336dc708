"""`sidstream codebook ...`: happy paths and one-line failures on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from psrq import load_codebook
from sidstream.commands.codebook import codebook

pytestmark = pytest.mark.unit


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 8)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    runner = CliRunner(mix_stderr=False)
    res = runner.invoke(codebook, list(args))
    return res.exit_code, res.stdout, res.stderr


def fit_ok(d: Path, *extra: str) -> Path:
    code, out, err = run("fit", "--method", "psrq", "--input", str(d / "X.npy"), "--layers", "2", "--codebook-size", "8",
                         "--out", str(d / "cb"), *extra)  # fmt: skip
    assert code == 0, err
    return d / "cb"


def test_fit_assign_report(data: Path) -> None:
    cb = fit_ok(data, "--alpha", "0.5")
    q, manifest = load_codebook(cb)
    assert manifest["options"]["alpha"] == 0.5 and manifest["codebook_sizes"] == [8, 8]
    assert manifest["metrics"]["health"]["sids"]["items"] == 400
    code, out, err = run("assign", "--codebook", str(cb), "--input", str(data / "X.npy"), "--out", str(data / "codes.npy"))
    assert code == 0, err
    codes = np.load(data / "codes.npy")
    assert np.array_equal(codes, q.encode(np.load(data / "X.npy")))
    (data / "labels.txt").write_text("\n".join("ab"[i % 2] for i in range(400)) + "\n")
    code, out, err = run("report", "--codebook", str(cb), "--input", str(data / "X.npy"), "--labels", str(data / "labels.txt"),
                         "--plots", str(data / "plots"), "--json")  # fmt: skip
    assert code == 0, err
    rep = json.loads(out)
    assert [r["layer"] for r in rep["layers"]] == [1, 2] and 0.5 <= rep["layers"][0]["purity"] <= 1.0
    assert (data / "plots" / "code_frequency.png").stat().st_size > 1000


def test_fit_with_parent_refits_and_reports_churn(data: Path) -> None:
    parent = fit_ok(data)
    code, out, err = run("fit", "--method", "psrq", "--input", str(data / "X.npy"), "--layers", "2", "--codebook-size", "8",
                         "--seed", "1", "--parent", str(parent), "--out", str(data / "child"))  # fmt: skip
    assert code == 0, err
    churn, refit = json.loads(out)["churn"], json.loads(out)["refit"]
    assert 0.0 <= churn["full_sid"] <= 1.0 and len(churn["per_layer"]) == 2
    assert refit["requested"] == "warm" and refit["taken"] in ("warm", "fresh")
    assert (refit["taken"] == "warm") == (refit["reason"] is None)  # a fresh fit says why (here: the drift guard)
    _, manifest = load_codebook(data / "child")
    assert manifest["parent"]["path"].endswith("cb")


def _one_line_failure(code: int, err: str, needle: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and needle in lines[0], lines[0]


def test_bad_inputs_fail_with_one_line(data: Path) -> None:
    X = np.load(data / "X.npy")
    fit_args = ["--layers", "2", "--codebook-size", "8", "--out", str(data / "o")]
    code, _, err = run("fit", "--input", str(data / "missing.npy"), *fit_args)
    _one_line_failure(code, err, "no such file")
    (data / "empty.npy").write_bytes(b"")
    code, _, err = run("fit", "--input", str(data / "empty.npy"), *fit_args)
    _one_line_failure(code, err, "empty file")
    (data / "junk.npy").write_bytes(b"not numpy")
    code, _, err = run("fit", "--input", str(data / "junk.npy"), *fit_args)
    _one_line_failure(code, err, "not a readable .npy")
    np.save(data / "vec.npy", X[0])
    code, _, err = run("fit", "--input", str(data / "vec.npy"), *fit_args)
    _one_line_failure(code, err, "2-D")
    np.save(data / "few.npy", X[:7])  # K >= 2 needs 2 * min_points_per_code (4) rows
    code, _, err = run("fit", "--input", str(data / "few.npy"), *fit_args)
    _one_line_failure(code, err, "need at least 8")
    nan = X.copy()
    nan[[3, 17]] = np.nan
    np.save(data / "nan.npy", nan)
    code, _, err = run("fit", "--input", str(data / "nan.npy"), *fit_args)
    _one_line_failure(code, err, "rows 3, 17")


def test_assign_reports_bad_rows_and_wrong_dims(data: Path) -> None:
    cb = fit_ok(data)
    X = np.load(data / "X.npy")
    np.save(data / "wide.npy", np.zeros((5, 9), np.float32))
    code, _, err = run("assign", "--codebook", str(cb), "--input", str(data / "wide.npy"), "--out", str(data / "c.npy"))
    _one_line_failure(code, err, "dim 9 != codebook dim 8")
    nan = X[:10].copy()
    nan[4, 2] = np.inf
    np.save(data / "nan.npy", nan)
    code, _, err = run("assign", "--codebook", str(cb), "--input", str(data / "nan.npy"), "--out", str(data / "c.npy"))
    _one_line_failure(code, err, "1 row(s) with NaN/inf: 4")
    assert not (data / "c.npy").exists()
    code, _, err = run("assign", "--codebook", str(cb), "--input", str(data / "nan.npy"), "--out", str(data / "c.npy"), "--skip-bad")
    assert code == 0 and "[4]" in err
    codes = np.load(data / "c.npy")
    assert (codes[4] == -1).all() and (codes[[0, 1, 2, 3, 5]] >= 0).all()
    code, _, err = run("assign", "--codebook", str(data / "nope"), "--input", str(data / "X.npy"), "--out", str(data / "c.npy"))
    _one_line_failure(code, err, "not a codebook artifact")


def test_fit_caps_k_by_the_one_rule(data: Path) -> None:
    """K = min(K, rows // min_points_per_code), as in every other fit (psrq.fitting)."""
    code, out, err = run("fit", "--input", str(data / "X.npy"), "--layers", "2", "--codebook-size", "500",
                         "--out", str(data / "capped"))  # fmt: skip
    assert code == 0, err
    # the default method (psrq_id) adds identity layers after the two semantic ones
    assert json.loads(out)["codebook_sizes"][:2] == [100, 100]  # 400 rows // 4
    code, out, err = run("fit", "--input", str(data / "X.npy"), "--layers", "2", "--codebook-size", "500",
                         "--min-points-per-code", "8", "--out", str(data / "capped8"))  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["codebook_sizes"][:2] == [50, 50]
