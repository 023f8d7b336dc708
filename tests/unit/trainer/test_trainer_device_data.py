"""The device-resident data path (trainer.device_data), forced on the CPU, against the host path:
the same batches (values and dtypes), and bit-identical training and evaluation results."""

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def codes(prep):
    from sidcore.config import CodebookSettings
    from trainer.codes import cached_codes

    return cached_codes(prep.embeddings, CodebookSettings(method="rq", codebook_size=8, layers=2), None)


def _lookup(prep, codes):
    from trainer.features import Lookup

    return Lookup(prep.vocab.rows(prep.catalog.tolist()), codes)


def _same_batches(host, device):
    host, device = list(host), list(device)
    assert len(host) == len(device) > 0
    for h, d in zip(host, device, strict=True):
        assert sorted(h) == sorted(d)
        for k in h:
            assert h[k].dtype == d[k].dtype, k
            assert h[k].shape == d[k].shape, k
            assert torch.equal(h[k], d[k]), k


@pytest.mark.parametrize(("seed", "start", "rank", "world"), [(None, 0, 0, 1), (7, 0, 0, 1), (7, 3, 0, 1), (5, 1, 1, 2)])
def test_same_batches_as_host_path(prep, codes, seed, start, rank, world):
    from trainer.device_data import DeviceData
    from trainer.features import batches

    lookup = _lookup(prep, codes[0])
    data = DeviceData(prep.train, lookup, "cpu")
    _same_batches(batches(prep.train, lookup, 33, seed, start, rank, world), data.batches(33, seed, start, rank, world))


def test_same_batches_with_int32_tables(prep, codes):
    """Whatever dtypes the tables have, the batch dtypes follow the host path's numpy results."""
    from trainer.device_data import DeviceData
    from trainer.features import Lookup, batches

    lookup = Lookup(prep.vocab.rows(prep.catalog.tolist()).astype(np.int32),
                    {m: c.astype(np.int32) for m, c in codes[0].items()})
    _same_batches(batches(prep.test, lookup, 50, 3), DeviceData(prep.test, lookup, "cpu").batches(50, 3))


def test_selection():
    from trainer.device_data import use_device_data
    from trainer.train_loop import TrainConfig

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_device_data("auto", cpu) and use_device_data("auto", cuda)
    assert use_device_data("device", cpu) and not use_device_data("host", cuda)
    with pytest.raises(ValueError):
        use_device_data("gpu", cpu)
    # fields added later stay out of to_dict at their defaults: job keys (trainer.jobs) unchanged
    assert "data_path" not in TrainConfig().to_dict() and "compile" not in TrainConfig().to_dict()
    assert TrainConfig(data_path="device").to_dict()["data_path"] == "device"


def _params_digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", ["din", "din+rq", "mcca"])
def test_training_bit_identical(prep, name, monkeypatch):
    """prepare + run_one, host vs device-resident forced on the CPU: metrics == and parameters ==."""
    import trainer.evaluate as ev
    from sidcore.config import CodebookSettings
    from trainer.models import ModelConfig
    from trainer.train_loop import TrainConfig

    built = []
    real = ev.build_model
    monkeypatch.setattr(ev, "build_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    spec = ev.parse_spec(name, ModelConfig(**ev.QUICK_MODEL), CodebookSettings(method="rq", layers=2, codebook_size=8),
                         prep.modalities)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for path in ("host", "device"):
            steps = []
            r = ev.run_one(prep, spec, 0, TrainConfig(epochs=2, batch_size=32, device="cpu", data_path=path), None,
                           on_step=lambda s, t, loss: steps.append(loss))  # noqa: B023
            out[path] = ({k: r[k] for k in ev.METRICS}, _params_digest(built[-1]), steps)
    finally:
        torch.set_num_threads(threads)
    assert out["host"] == out["device"]


def test_resume_and_mean_loss_identical(prep, codes, tmp_path):
    """A resident run killed mid-epoch and resumed ends where an uninterrupted host run does."""
    from trainer.models import ModelConfig, build_model
    from trainer.train_loop import InjectedFailure, TrainConfig, train_model

    lookup = _lookup(prep, codes[0])
    config = ModelConfig(kind="mcca", emb_dim=8, att_hidden=(8,), mlp_hidden=(16,))
    cfg = TrainConfig(epochs=2, batch_size=40, checkpoint_every=3, device="cpu")

    def fresh():
        torch.manual_seed(0)
        return build_model(config, prep.vocab.n_rows, codes[1])

    host = fresh()
    host_stats = train_model(host, prep.train, lookup, cfg)
    resident = fresh()
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(InjectedFailure):
        train_model(resident, prep.train, lookup, replace(cfg, data_path="device"), checkpoint=ckpt, fail_after_steps=4)
    resident = fresh()
    stats = train_model(resident, prep.train, lookup, replace(cfg, data_path="device"), checkpoint=ckpt)
    assert stats["resumed_from_step"] == 3 and stats["steps"] == host_stats["steps"]
    assert stats["mean_loss_last_epoch"] == host_stats["mean_loss_last_epoch"]
    assert _params_digest(resident) == _params_digest(host)


def test_predict_identical(prep, codes):
    from trainer.models import ModelConfig, build_model
    from trainer.train_loop import predict

    lookup = _lookup(prep, codes[0])
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mcca", emb_dim=8, att_hidden=(8,), mlp_hidden=(16,)), prep.vocab.n_rows,
                        codes[1])
    a = predict(model, prep.test, lookup, batch_size=64, device="cpu")
    b = predict(model, prep.test, lookup, batch_size=64, device="cpu", data_path="device")
    assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.slow  # a cold inductor compile took about 2 minutes on two busy cores
def test_compile_one_step(prep, codes):
    """TrainConfig.compile runs (torch.compile of the forward) for a tiny step on the CPU."""
    from trainer.features import Samples
    from trainer.models import ModelConfig, build_model
    from trainer.train_loop import TrainConfig, train_model

    lookup = _lookup(prep, codes[0])
    rows = np.arange(16)
    tiny = Samples(*(a[rows] for a in (prep.train.users, prep.train.items, prep.train.labels, prep.train.timestamps,
                                       prep.train.history)))
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="din", emb_dim=8, att_hidden=(8,), mlp_hidden=(16,)), prep.vocab.n_rows, {})
    torch._dynamo.reset()
    try:
        stats = train_model(model, tiny, lookup, TrainConfig(epochs=1, batch_size=16, device="cpu", data_path="device",
                                                             compile=True, checkpoint_every=0))
    finally:
        torch._dynamo.reset()
    assert stats["steps"] == 1 and np.isfinite(stats["mean_loss_last_epoch"])
