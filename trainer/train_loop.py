"""Training and prediction for the rankers: Adam on BCE, resumable checkpoints, DDP, AMP on CUDA.

A checkpoint carries the model and optimizer state, where training stopped (epoch, batch),
and the configs, so that a killed run resumes from the last checkpoint with the same batches.
Under `torchrun` (torch.distributed initialised) each rank trains on its shard of every
global batch through DistributedDataParallel; only rank 0 writes checkpoints.

Off the CPU the training data is device-resident (trainer.device_data): moved to the device
once, each batch gathered there by index, the per-step losses read back once per epoch. The
CPU default keeps the host path (numpy batches), whose results the evaluation tables record;
`data_path="device"` forces the resident path on the CPU too, with bit-identical results.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainer.device_data import DeviceData, use_device_data
from trainer.features import Lookup, Samples, batches, n_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Paper: Adam, 1 epoch, batch 512, lr 1e-4 (Music4all). Our defaults are for small data
    sets: lr 1e-3 and more than one epoch (docs/evaluation.md explains why)."""

    epochs: int = 1
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: bool = True  # bf16 autocast, on CUDA only
    checkpoint_every: int = 100  # steps between checkpoints (and at every epoch end)
    threads: int = 0  # torch intra-op threads; 0 = leave as is
    data_path: str = "auto"  # "auto" (device-resident off the CPU) | "host" | "device" (trainer.device_data)
    compile: bool = False  # torch.compile the model's forward (for the GPU path)

    def to_dict(self) -> dict[str, Any]:
        """The fields; those added after job keys were first derived from it are left out at their
        defaults, so that existing job keys (trainer.jobs) stay the same."""
        out = asdict(self)
        for name, default in _LATER_FIELDS.items():
            if out[name] == default:
                del out[name]
        return out


_LATER_FIELDS: dict[str, Any] = {"data_path": "auto", "compile": False}


class InjectedFailure(RuntimeError):
    """Raised by `fail_after_steps` to simulate a crash (tests, drills)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _autocast(device: torch.device, amp: bool) -> Any:
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def prepare_model(model: nn.Module, config: TrainConfig) -> torch.device:
    """A training run's threads, seed and device (a CUDA device with its index); the model is
    moved there."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    model.to(device)
    return device


class RunState:
    """Where a training run stands and what it owes: resumed from its checkpoint (if one is
    there), the step and sample counters, checkpoints every `checkpoint_every` steps (rank 0
    writes), the crash drill, and the result dict. Shared by train_model and the CUDA-graph loop
    (trainer.graphed)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, device: torch.device,
                 checkpoint: Path | None, extra_state: dict[str, Any] | None, fail_after_steps: int | None,
                 rank: int = 0) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config
        self.checkpoint, self.extra_state, self.fail_after_steps, self.rank = checkpoint, extra_state, fail_after_steps, rank
        self.epoch0 = self.batch0 = self.step = 0
        if checkpoint is not None and checkpoint.is_file():
            state = torch.load(checkpoint, map_location=device, weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            self.epoch0, self.batch0, self.step = state["epoch"], state["batch"], state["step"]
            log.info("resuming from %s at step %d (epoch %d, batch %d)", checkpoint, self.step, self.epoch0, self.batch0)
        self.resumed_from = self.step
        self.seen = 0
        self.started = time.perf_counter()

    def start(self) -> None:
        """The clock starts here (after compiling, capturing, moving data)."""
        self.started = time.perf_counter()

    def first_batch(self, epoch: int) -> int:
        return self.batch0 if epoch == self.epoch0 else 0

    def save(self, epoch: int, batch: int) -> None:
        if self.checkpoint is not None and self.rank == 0:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": epoch,
                     "batch": batch, "step": self.step, "train_config": self.config.to_dict(), **(self.extra_state or {})}
            save_checkpoint(self.checkpoint, state)

    def count(self, steps: int, rows: int) -> None:
        self.step += steps
        self.seen += rows

    def due(self, epoch: int, next_batch: int) -> None:
        """After counted steps: a checkpoint when its step has come, the drill's crash when its has."""
        every = self.config.checkpoint_every
        if every and self.step % every == 0:
            self.save(epoch, next_batch)
        if self.fail_after_steps is not None and self.step - self.resumed_from >= self.fail_after_steps:
            raise InjectedFailure(f"injected failure after {self.step} steps")

    def steps_until_due(self) -> int | None:
        """Steps left before the next checkpoint or the drill's crash (None: neither is set)."""
        left = []
        if self.config.checkpoint_every:
            left.append(self.config.checkpoint_every - self.step % self.config.checkpoint_every)
        if self.fail_after_steps is not None:
            left.append(max(1, self.resumed_from + self.fail_after_steps - self.step))
        return min(left) if left else None

    def result(self, losses: list[float]) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        return {
            "steps": self.step,
            "resumed_from_step": self.resumed_from,
            "mean_loss_last_epoch": float(np.mean(losses)) if losses else float("nan"),
            "seconds": seconds,
            "samples_per_s": self.seen / seconds if seconds > 0 else float("nan"),
        }


def train_model(
    model: nn.Module,
    samples: Samples,
    lookup: Lookup,
    config: TrainConfig,
    checkpoint: Path | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    fail_after_steps: int | None = None,
    extra_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train in place; returns {steps, resumed_from_step, mean_loss_last_epoch, seconds, samples_per_s}."""
    device = prepare_model(model, config)
    rank, world = distributed()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = n_batches(len(samples), config.batch_size, world)
    total = per_epoch * config.epochs
    run = RunState(model, optimizer, config, device, checkpoint, extra_state, fail_after_steps, rank)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = nn.BCEWithLogitsLoss()
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor] = torch.compile(net) if config.compile else net
    data = DeviceData(samples, lookup, device) if use_device_data(config.data_path, device) else None

    run.start()
    losses: list[float] = []
    net.train()
    for epoch in range(run.epoch0, config.epochs):
        losses = []
        pending: list[torch.Tensor] = []  # device-resident path: losses read back at the epoch's end
        first = run.first_batch(epoch)
        shuffle_seed = config.seed * 1000 + epoch
        source = (
            batches(samples, lookup, config.batch_size, shuffle_seed, first, rank, world) if data is None
            else data.batches(config.batch_size, shuffle_seed, first, rank, world)
        )
        for b, batch in enumerate(source, start=first):
            if data is None:
                batch = _to(batch, device)
            with _autocast(device, config.amp):
                logits = forward(batch)
            loss = loss_fn(logits.float(), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.count(1, int(batch["label"].shape[0]))
            if data is None:
                losses.append(float(loss.detach()))
            else:
                pending.append(loss.detach())
            if on_step is not None:
                on_step(run.step, total, losses[-1] if data is None else float(pending[-1]))
            run.due(epoch, b + 1)
        if pending:
            losses = [float(x) for x in torch.stack(pending).cpu().tolist()]
        run.save(epoch + 1, 0)
    return run.result(losses)


@torch.no_grad()
def predict(model: nn.Module, samples: Samples, lookup: Lookup, batch_size: int = 4096, device: str = "auto",
            data_path: str = "auto") -> np.ndarray:
    """Probabilities float64 [N] in row order; `data_path` as in TrainConfig."""
    dev = resolve_device(device)
    model.to(dev).eval()
    source = (
        DeviceData(samples, lookup, dev).batches(batch_size) if use_device_data(data_path, dev)
        else (_to(b, dev) for b in batches(samples, lookup, batch_size))
    )
    out = [torch.sigmoid(model(b).float()).cpu().numpy() for b in source]
    model.train()
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
