import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from sidcore.config import CodebookSettings, get_settings
from sidcore.registry import Registry
from trainer.dataset import write_dataset
from trainer.embeddings import TextEncoding
from trainer.jobs import JobConfig, load_ranker, train_codebooks, train_ranker
from trainer.models import ModelConfig
from trainer.synthetic import make_synthetic
from trainer.train_loop import InjectedFailure, TrainConfig

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def syn_dir(tmp_path):
    ds = make_synthetic(n_users=60, n_items=120, events_per_user=20, modalities=("text", "audio"), seed=2)
    write_dataset(tmp_path / "data", ds)
    return tmp_path / "data"


def _config(tmp_path, data, **kw):
    base = dict(registry=tmp_path / "registry", work_dir=tmp_path / "work", data=data,
                codebook=CodebookSettings(codebook_size=8, layers=2), model=ModelConfig(emb_dim=8, att_hidden=(8,), mlp_hidden=(16,)),
                train=TrainConfig(epochs=2, batch_size=64, checkpoint_every=1))
    base.update(kw)
    return JobConfig(**base)


def test_codebook_job_registers_promotes_and_keeps_parent(tmp_path, syn_dir):
    reg = Registry(tmp_path / "registry")
    v1 = train_codebooks(_config(tmp_path, syn_dir))
    assert reg.live("codebooks").version == v1.version
    assert sorted(v1.manifest["modalities"]) == ["audio", "joint", "text"]
    assert v1.manifest["parent_version"] is None and v1.manifest["data_fingerprint"]
    from psrq import load_codebook_set

    assert load_codebook_set(v1.path).modalities == ["audio", "joint", "text"]
    assert train_codebooks(_config(tmp_path, syn_dir)).version == v1.version  # same inputs: no new version
    v2 = train_codebooks(_config(tmp_path, syn_dir, force=True))
    assert v2.version != v1.version and v2.manifest["parent_version"] == v1.version
    assert (v1.path / "registry.json").is_file()  # the old live version is untouched
    assert reg.live("codebooks").version == v2.version


def test_codebook_job_resumes_after_crash(tmp_path, syn_dir):
    with pytest.raises(InjectedFailure):
        train_codebooks(_config(tmp_path, syn_dir, fail_after_steps=1))
    assert Registry(tmp_path / "registry").versions("codebooks") == []
    (work,) = (tmp_path / "work").iterdir()
    assert len([p for p in work.iterdir() if (p / "manifest.json").is_file()]) == 1  # one modality fitted
    v = train_codebooks(_config(tmp_path, syn_dir))
    assert Registry(tmp_path / "registry").live("codebooks").version == v.version
    assert not work.exists()


def test_killed_ranker_job_resumes_and_registers(tmp_path, syn_dir):
    train_codebooks(_config(tmp_path, syn_dir))
    with pytest.raises(InjectedFailure):
        train_ranker(_config(tmp_path, syn_dir, fail_after_steps=5))
    reg = Registry(tmp_path / "registry")
    assert reg.versions("ranker") == []
    assert list((tmp_path / "work").glob("ranker-*/checkpoint.pt"))
    v = train_ranker(_config(tmp_path, syn_dir))
    stats = v.manifest["train_stats"]
    assert stats["resumed_from_step"] == 5 and stats["steps"] > 5
    assert reg.live("ranker").version == v.version
    assert v.manifest["codebook_version"] == reg.live("codebooks").version
    assert 0 <= v.manifest["metrics"]["all_auc"] <= 1
    model, vocab, manifest = load_ranker(v)
    assert vocab and manifest["version"] == v.version


def test_sigkilled_job_process_resumes(tmp_path, syn_dir):
    """A real crash: the CLI job is SIGKILLed after its first checkpoint; a rerun finishes it."""
    env = {**os.environ, "SIDSTREAM_HOME": str(tmp_path / "home")}
    args = [sys.executable, "-m", "sidstream.cli", "train", "all", "--data", str(syn_dir), "--codebook-size", "8",
            "--layers", "2", "--epochs", "8", "--batch-size", "32", "--checkpoint-every", "1", "--json"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list((tmp_path / "home" / "work").glob("ranker-*/checkpoint.pt")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reg = Registry(tmp_path / "home" / "registry")
    assert reg.versions("ranker") == []
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    ranker = [line for line in lines if line["kind"] == "ranker"][0]
    assert reg.live("ranker").version == ranker["version"]
    assert reg.live("ranker").manifest["train_stats"]["resumed_from_step"] > 0


def test_ranker_reads_parquet_logs(tmp_path, syn_dir):
    train_codebooks(_config(tmp_path, syn_dir))
    logs = tmp_path / "logs"
    logs.mkdir()
    inter = pd.read_csv(syn_dir / "interactions.csv", dtype={"user_id": str, "item_id": str})
    half = len(inter) // 2
    inter.iloc[:half].assign(label=lambda d: d["label"].astype("int8")).to_parquet(logs / "a.parquet")
    inter.iloc[half - 10 :].assign(label=lambda d: d["label"].astype("int8")).to_parquet(logs / "b.parquet")  # overlap
    # items.jsonl without embeddings: the job embeds the item texts as the CLI's settings say
    v = train_ranker(_config(tmp_path, None, interactions=logs, items=syn_dir / "items.jsonl",
                             model=ModelConfig(kind="din", emb_dim=8, att_hidden=(8,), mlp_hidden=(16,)),
                             text_encoding=TextEncoding.from_settings(get_settings())))
    assert v.manifest["split"]["train_rows"] + v.manifest["split"]["test_rows"] == len(inter)


def test_cli_groups_are_click_objects():
    import click

    from sidstream.commands.train import data, eval_cmd, train

    assert isinstance(train, click.Group) and isinstance(data, click.Group)
    assert eval_cmd.name == "eval"
    assert {"codebooks", "ranker", "all"} <= set(train.commands)


def test_fetch_fails_clearly_without_network(tmp_path):
    from sidstream.commands.train import data

    result = CliRunner().invoke(data, ["fetch", "lastfm", "--out", str(tmp_path / "x"), "--src",
                                       "http://127.0.0.1:9/nothing.zip", "--timeout", "2"])
    assert result.exit_code != 0 and "could not download" in result.output


def test_refit_is_aligned_to_the_live_parent(tmp_path, syn_dir):
    """A refit with another seed renumbers its codes to agree with the live version, and its
    manifest reports the churn; without alignment far more SIDs would change."""
    from psrq import load_codebook_set
    from psrq.align import churn

    v1 = train_codebooks(_config(tmp_path, syn_dir, codebook=CodebookSettings(method="rq", codebook_size=8, layers=2, seed=0)))
    v2 = train_codebooks(_config(tmp_path, syn_dir, codebook=CodebookSettings(method="rq", codebook_size=8, layers=2, seed=1)))
    assert v2.manifest["parent_version"] == v1.version
    reported = v2.manifest["metrics"]["text"]["churn_vs_parent"]
    # the same refit without a parent, for comparison
    v3 = train_codebooks(_config(tmp_path / "solo", syn_dir, codebook=CodebookSettings(method="rq", codebook_size=8, layers=2, seed=1)))
    s1, s2, s3 = (load_codebook_set(v.path) for v in (v1, v2, v3))
    import numpy as np

    rng = np.random.default_rng(0)
    X = s1.codebooks["text"].decode(np.stack([rng.integers(0, 8, 200), rng.integers(0, 8, 200)], 1))
    aligned = churn(s1.encode("text", X), s2.encode("text", X))["per_layer"][0]
    unaligned = churn(s1.encode("text", X), s3.encode("text", X))["per_layer"][0]
    assert reported["full_sid"] <= 1.0 and aligned < unaligned
