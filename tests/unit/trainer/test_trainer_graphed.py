"""The CUDA-graph training loop (trainer.graphed).

On the CPU, with capture off, its loop (batches, order, the short last batch, checkpoints,
resume, the crash drill) must give parameters bit-identical to `train_model` on the
device-resident path. On CUDA (skipped without one), capture on: the graph is really used,
and its parameters and losses match eager training on the same device within bf16 noise.
"""

import math
from dataclasses import replace

import pytest
import torch

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def lookup(prep):
    from sidcore.config import CodebookSettings
    from trainer.codes import cached_codes
    from trainer.features import Lookup

    codes, sizes = cached_codes(prep.embeddings, CodebookSettings(method="rq", codebook_size=8, layers=2, kmeans_backend="torch"), None)
    return Lookup(prep.vocab.rows(prep.catalog.tolist()), codes), sizes


def _model(prep, sizes, kind="mcca"):
    from trainer.models import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(kind="din", sid_codebook="text") if kind == "din+sid" else ModelConfig(kind=kind)
    return build_model(config, prep.vocab.n_rows, sizes)


def _params(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["din", "din+sid", "mcca"])
def test_cpu_loop_bit_identical_to_train_model(prep, lookup, kind):
    from trainer.graphed import train_model_graphed
    from trainer.train_loop import TrainConfig, train_model

    table, sizes = lookup
    config = TrainConfig(epochs=2, batch_size=37, device="cpu", data_path="device", checkpoint_every=0, seed=3)
    assert len(prep.train) % 37 != 0  # a short last batch is in every epoch
    a, b = _model(prep, sizes, kind), _model(prep, sizes, kind)
    sa = train_model(a, prep.train, table, config)
    sb = train_model_graphed(b, prep.train, table, config, capture=False)
    assert sa["steps"] == sb["steps"] and sb["cuda_graph"] is False
    assert sa["mean_loss_last_epoch"] == sb["mean_loss_last_epoch"]
    pa, pb = _params(a), _params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_cpu_resume_after_crash_matches_uninterrupted(prep, lookup, tmp_path):
    from trainer.graphed import train_model_graphed
    from trainer.train_loop import InjectedFailure, TrainConfig

    table, sizes = lookup
    config = TrainConfig(epochs=2, batch_size=40, device="cpu", checkpoint_every=3, seed=1)
    whole = _model(prep, sizes)
    train_model_graphed(whole, prep.train, table, config, capture=False)
    resumed, ckpt = _model(prep, sizes), tmp_path / "ckpt.pt"
    with pytest.raises(InjectedFailure):
        train_model_graphed(resumed, prep.train, table, config, checkpoint=ckpt, fail_after_steps=7, capture=False)
    again = _model(prep, sizes)
    stats = train_model_graphed(again, prep.train, table, config, checkpoint=ckpt, capture=False)
    assert stats["resumed_from_step"] == 6  # the last checkpoint before the crash at step 7
    pw, pa = _params(whole), _params(again)
    assert all(torch.equal(pw[k], pa[k]) for k in pw)


def test_cpu_on_step_sees_every_step_and_loss_of_train_model(prep, lookup):
    """The loop steps in chunks (the host only launches graphs) and reads the losses once per
    chunk: on_step still gets every step, in order, with train_model's loss for it."""
    from trainer.graphed import PROGRESS_EVERY, train_model_graphed
    from trainer.train_loop import TrainConfig, train_model

    table, sizes = lookup
    config = TrainConfig(epochs=2, batch_size=7, device="cpu", data_path="device", checkpoint_every=0, seed=5)
    assert len(prep.train) // 7 > PROGRESS_EVERY  # several chunks per epoch
    seen_a: list[tuple[int, int, float]] = []
    seen_b: list[tuple[int, int, float]] = []
    train_model(_model(prep, sizes, "din"), prep.train, table, config, on_step=lambda *a: seen_a.append(a))
    train_model_graphed(_model(prep, sizes, "din"), prep.train, table, config, capture=False,
                        on_step=lambda *a: seen_b.append(a))
    assert seen_a == seen_b and [s for s, _, _ in seen_b] == list(range(1, len(seen_b) + 1))


def test_steps_stay_inside_the_epoch(prep, lookup):
    from trainer.device_data import DeviceData
    from trainer.graphed import GraphedStep
    from trainer.train_loop import TrainConfig

    table, sizes = lookup
    data = DeviceData(prep.train, table, "cpu")
    step = GraphedStep(_model(prep, sizes), data, 64, TrainConfig(), capture=False)
    step.start_epoch(data.order(0), step.full_batches - 2)
    step.steps(2)
    assert step.position == step.full_batches and int(step.static_step) == step.full_batches
    with pytest.raises(ValueError, match="past the epoch"):
        step.steps(1)
    with pytest.raises(ValueError, match="steps_per_graph"):
        GraphedStep(_model(prep, sizes), data, 64, TrainConfig(), capture=False, steps_per_graph=0)


def test_selection(monkeypatch):
    from trainer import graphed
    from trainer.train_loop import TrainConfig

    assert not graphed.use_cuda_graph(True, TrainConfig(device="cpu"))
    assert not graphed.use_cuda_graph(False, TrainConfig(device="cuda"))
    assert not graphed.use_cuda_graph(True, TrainConfig(device="cuda", data_path="host"))
    assert graphed.use_cuda_graph(True, TrainConfig(device="cuda"))
    monkeypatch.setattr(graphed, "distributed", lambda: (0, 2))
    assert not graphed.use_cuda_graph(True, TrainConfig(device="cuda"))  # DDP keeps the eager loop
    with pytest.raises(ValueError, match="CUDA device"):
        graphed.GraphedStep(torch.nn.Linear(1, 1), type("D", (), {"device": torch.device("cpu")})(), 4,
                            TrainConfig(), capture=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["din", "mcca"])
def test_cuda_graph_matches_eager(prep, lookup, kind):
    from trainer.graphed import train_model_graphed
    from trainer.train_loop import TrainConfig

    table, sizes = lookup
    config = TrainConfig(epochs=2, batch_size=32, device="cuda", checkpoint_every=0, seed=2, amp=False)
    eager, graph = _model(prep, sizes, kind), _model(prep, sizes, kind)
    se = train_model_graphed(eager, prep.train, table, config, capture=False)
    sg = train_model_graphed(graph, prep.train, table, config, capture=True)
    assert sg["cuda_graph"] is True and se["cuda_graph"] is False
    assert abs(se["mean_loss_last_epoch"] - sg["mean_loss_last_epoch"]) < 1e-3
    pe, pg = _params(eager), _params(graph)
    worst = max(float((pe[k].float() - pg[k].float()).abs().max()) for k in pe if pe[k].is_floating_point())
    assert worst < 1e-3, worst
    # and with bf16 autocast the run still trains through the graph
    bf16 = _model(prep, sizes, kind)
    stats = train_model_graphed(bf16, prep.train, table, replace(config, amp=True), capture=True)
    assert stats["cuda_graph"] is True and math.isfinite(stats["mean_loss_last_epoch"])
    assert any(not torch.equal(v, _params(_model(prep, sizes, kind))[k]) for k, v in _params(bf16).items())


def test_bench_graphed_row_runs_the_chunked_loop_on_cpu(prep, lookup):
    """`bench train`'s graphed rows (CUDA only in the command) step through GraphedStep in
    chunks; on the CPU the same code runs eagerly and reports what it ran."""
    import math

    from sidstream.bench.train import _measure
    from trainer.models import ModelConfig

    table, sizes = lookup
    r = _measure("din", ModelConfig(kind="din"), prep, table.codes, sizes, "cpu", False, 21, 2, 16, data="graphed")
    assert r["steps"] == 21 and r["cuda_graph"] is False and math.isfinite(r["final_loss"])
    assert r["samples_per_s"] > 0
