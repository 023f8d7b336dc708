"""The retraining job's refits (trainer.jobs.train_codebooks): warm from the live parent by default,
K_id kept, the refit and the kept shares in the manifest, the job's summary and `sidstream status`."""

from __future__ import annotations

import json

import pytest

from sidcore.config import CodebookSettings
from sidstream.commands.status import refit_summary
from sidstream.commands.train import _report
from trainer.dataset import write_dataset
from trainer.jobs import JobConfig, train_codebooks
from trainer.synthetic import make_synthetic

pytestmark = pytest.mark.unit


@pytest.fixture
def syn_dir(tmp_path):
    write_dataset(tmp_path / "data", make_synthetic(n_users=60, n_items=120, events_per_user=20, modalities=("text",), seed=2))
    return tmp_path / "data"


def _config(tmp_path, data, **codebook):
    return JobConfig(registry=tmp_path / "registry", work_dir=tmp_path / "work", data=data, force=True,
                     codebook=CodebookSettings(codebook_size=8, layers=2, **codebook))


def test_a_refit_starts_warm_from_the_live_version_and_reports_what_it_kept(tmp_path, syn_dir, capsys):
    from psrq import load_codebook_set

    v1 = train_codebooks(_config(tmp_path, syn_dir))
    assert v1.manifest["metrics"]["text"]["refit"]["reason"] == "no parent version"
    v2 = train_codebooks(_config(tmp_path, syn_dir))
    m = v2.manifest["metrics"]["text"]
    assert m["refit"]["taken"] == "warm" and m["refit"]["reason"] is None
    assert m["kept"]["identity_size_kept"] is True and m["kept"]["path"] >= 0.95
    q1, q2 = (load_codebook_set(v.path).codebooks["text"] for v in (v1, v2))
    assert q2.identity_size == q1.identity_size
    assert refit_summary(v2.manifest)["text"]["kept_path"] == m["kept"]["path"]
    assert refit_summary(v1.manifest)["text"] == {"taken": "fresh", "reason": "no parent version", "kept_path": None,
                                                  "kept_layers": None, "identity_size_kept": None}
    _report("codebooks", v2, False)
    assert "text: warm refit, semantic paths kept" in capsys.readouterr().out
    _report("codebooks", v2, True)
    assert json.loads(capsys.readouterr().out)["metrics"]["text"]["kept"]["path"] == m["kept"]["path"]


def test_a_method_change_refits_fresh_and_the_manifest_says_why(tmp_path, syn_dir):
    train_codebooks(_config(tmp_path, syn_dir, method="rq"))
    v2 = train_codebooks(_config(tmp_path, syn_dir, method="psrq"))
    refit = v2.manifest["metrics"]["text"]["refit"]
    assert refit["taken"] == "fresh" and refit["reason"] == "method changed: rq -> psrq"
