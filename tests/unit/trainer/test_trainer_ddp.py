"""DDP: two CPU processes (gloo) train one model on their shards and end with identical weights."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from sidcore.config import CodebookSettings
        from trainer.codes import cached_codes
        from trainer.evaluate import prepare
        from trainer.features import Lookup
        from trainer.models import ModelConfig, build_model
        from trainer.synthetic import make_synthetic
        from trainer.train_loop import TrainConfig, train_model

        prep = prepare(make_synthetic(n_users=40, n_items=80, events_per_user=10, seed=3), test_fraction=0.25)
        codes, sizes = cached_codes(prep.embeddings, CodebookSettings(codebook_size=8, layers=2), None)
        torch.manual_seed(0)
        model = build_model(ModelConfig(kind="mcca", emb_dim=8, att_hidden=(8,), mlp_hidden=(16,)), prep.vocab.n_rows, sizes)
        stats = train_model(model, prep.train, Lookup(prep.vocab.rows(prep.catalog.tolist()), codes),
                            TrainConfig(epochs=1, batch_size=32, checkpoint_every=0))
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save({"params": flat, "loss": stats["mean_loss_last_epoch"], "steps": stats["steps"],
                    "world": dist.get_world_size()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_ranks_agree(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == r1["steps"] > 0
    assert torch.isfinite(torch.tensor([r0["loss"], r1["loss"]])).all()
    assert torch.allclose(r0["params"], r1["params"], atol=1e-6)  # gradients were all-reduced


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_training_on_cuda():
    from sidcore.config import CodebookSettings
    from trainer.codes import cached_codes
    from trainer.evaluate import prepare
    from trainer.features import Lookup
    from trainer.models import ModelConfig, build_model
    from trainer.synthetic import make_synthetic
    from trainer.train_loop import TrainConfig, train_model

    prep = prepare(make_synthetic(n_users=40, n_items=80, events_per_user=10), test_fraction=0.25)
    codes, sizes = cached_codes(prep.embeddings, CodebookSettings(codebook_size=8, layers=2), None)
    model = build_model(ModelConfig(kind="mcca", emb_dim=8), prep.vocab.n_rows, sizes)
    stats = train_model(model, prep.train, Lookup(prep.vocab.rows(prep.catalog.tolist()), codes),
                        TrainConfig(epochs=1, batch_size=32, device="cuda", amp=True, checkpoint_every=0))
    assert stats["steps"] > 0 and stats["mean_loss_last_epoch"] == stats["mean_loss_last_epoch"]
