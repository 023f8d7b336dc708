"""The retraining job's batch and learning rate: 512 / 1e-3 on the CPU, the measured GPU default
(settings.train.gpu_batch_size / gpu_lr) on a GPU, and always what the user gave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import trainer.train_loop
from sidcore.config import Settings, use_settings
from sidstream.commands.train import _job_config


def _kw(tmp_path: Path, **given: Any) -> dict[str, Any]:
    return {"registry": tmp_path, "work_dir": tmp_path, "data_dir": None, "interactions": None, "items": None,
            "promote": False, "fail_after_steps": None, **given}


@pytest.fixture(autouse=True)
def _settings(tmp_path: Path) -> Any:
    use_settings(Settings(home=tmp_path, train={"gpu_batch_size": 4096, "gpu_lr": 0.0028}))
    yield
    use_settings(None)


def test_cpu_keeps_512(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer.train_loop, "resolve_device", lambda name: torch.device("cpu"))
    cfg = _job_config(_kw(tmp_path)).train
    assert (cfg.batch_size, cfg.lr) == (512, 1e-3)


def test_gpu_takes_the_measured_default_unless_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer.train_loop, "resolve_device", lambda name: torch.device("cuda"))
    cfg = _job_config(_kw(tmp_path)).train
    assert (cfg.batch_size, cfg.lr) == (4096, 0.0028)
    cfg = _job_config(_kw(tmp_path, batch_size=1024, lr=0.002)).train
    assert (cfg.batch_size, cfg.lr) == (1024, 0.002)


def test_the_graphed_compiled_step_is_the_gpu_default_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer.train_loop, "resolve_device", lambda name: torch.device("cpu"))
    job = _job_config(_kw(tmp_path))
    assert job.train.compile is False  # the CPU keeps the eager, uncompiled loop
    monkeypatch.setattr(trainer.train_loop, "resolve_device", lambda name: torch.device("cuda"))
    job = _job_config(_kw(tmp_path))
    assert job.cuda_graph is True and job.train.compile is True
    use_settings(Settings(home=tmp_path, train={"gpu_cuda_graph": False, "gpu_compile": False}))
    job = _job_config(_kw(tmp_path))
    assert job.cuda_graph is False and job.train.compile is False
