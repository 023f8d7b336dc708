"""The ranker's training step as one CUDA graph: gather -> forward (bf16) -> BCE -> backward -> Adam.

At batch 512 a DIN or MCCA step on a GPU is launch-bound: a hundred-odd small kernels, each
a few microseconds, issued one by one from Python. Here the whole step -- the batch gather
from the device-resident tables (trainer.device_data) included -- is captured once and then
replayed: per step the host copies the step's row indices into a static buffer and launches
one graph. Optionally the model is `torch.compile`d first (fewer, fused kernels) inside the
same capture. Adam runs fused and `capturable` on CUDA (its step counters stay on the device).

The loop mirrors `trainer.train_loop.train_model` -- the same batches in the same order
(DeviceData), checkpoints of the same form, resume, `on_step`, the crash drill -- so the
retraining job uses it on a single CUDA device (JobConfig.cuda_graph). Capture needs a fixed
shape: the first `WARMUP_STEPS` full batches run eagerly on a side stream (they are real
steps: lazy state, compilation), and a short last batch of an epoch runs eagerly through the
uncompiled model. With `capture=False` (any device) every step is eager: on the CPU the
parameters are then bit-identical to `train_model(data_path="device")`
(tests/unit/test_trainer_graphed.py), which is how the loop is tested without a GPU; the capture
itself is compared against eager training on CUDA (tests/unit/test_trainer_graphed.py, GPU only).

The offline evaluation (`sidstream eval`, docs/results) keeps train_model's eager loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.device_data import DeviceData
from trainer.features import Lookup, Samples, n_batches
from trainer.train_loop import InjectedFailure, TrainConfig, distributed, resolve_device, save_checkpoint

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager full-batch steps before the capture


def _autocast(device: torch.device, amp: bool) -> Any:
    # cache_enabled=False: autocast's weight-cast cache must not outlive a captured region
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()


def use_cuda_graph(enabled: bool, config: TrainConfig) -> bool:
    """Whether the graphed loop applies: asked for, one CUDA process, device-resident data."""
    if not enabled or config.data_path == "host":
        return False
    return resolve_device(config.device).type == "cuda" and distributed()[1] == 1


class GraphedStep:
    """`step(rows)` -> that step's loss (a device tensor); rows: int64 indices on the device."""

    def __init__(self, model: nn.Module, data: DeviceData, batch_size: int, config: TrainConfig,
                 capture: bool | None = None) -> None:
        self.device = data.device
        on_cuda = self.device.type == "cuda"
        self.capture = on_cuda if capture is None else capture
        if self.capture and not on_cuda:
            raise ValueError("CUDA graph capture needs a CUDA device")
        self.model, self.data, self.batch_size, self.amp = model, data, batch_size, config.amp
        extra: dict[str, Any] = {"capturable": True, "fused": True} if on_cuda else {}
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **extra)
        self.forward: Callable[[dict[str, torch.Tensor]], torch.Tensor] = (
            torch.compile(model) if config.compile else model)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0
        self.static_rows = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.static_loss: torch.Tensor | None = None

    def _loss(self, rows: torch.Tensor, forward: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> torch.Tensor:
        batch = self.data.batch(rows)
        with _autocast(self.device, self.amp):
            logits = forward(batch)
        return self.loss_fn(logits.float(), batch["label"])

    def _eager(self, rows: torch.Tensor, forward: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> torch.Tensor:
        loss = self._loss(rows, forward)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.numel() != self.batch_size:  # an epoch's short last batch: eager, uncompiled
            return self._eager(rows, self.model)
        if not self.capture:
            return self._eager(rows, self.forward)
        if self.graph is None:
            if self.warm < WARMUP_STEPS:
                self.warm += 1
                current = torch.cuda.current_stream(self.device)
                side = torch.cuda.Stream(self.device)
                side.wait_stream(current)
                with torch.cuda.stream(side):
                    loss = self._eager(rows, self.forward)
                current.wait_stream(side)
                return loss
            self._capture()
        assert self.graph is not None and self.static_loss is not None
        self.static_rows.copy_(rows, non_blocking=True)
        self.graph.replay()
        return self.static_loss.clone()

    def _capture(self) -> None:
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss = self._loss(self.static_rows, self.forward)
            loss.backward()
            self.optimizer.step()
        self.graph, self.static_loss = graph, loss.detach()


def train_model_graphed(
    model: nn.Module,
    samples: Samples,
    lookup: Lookup,
    config: TrainConfig,
    checkpoint: Any = None,
    on_step: Callable[[int, int, float], None] | None = None,
    fail_after_steps: int | None = None,
    extra_state: dict[str, Any] | None = None,
    capture: bool | None = None,
) -> dict[str, Any]:
    """`train_model` with the step as a CUDA graph (single process); same return dict plus `cuda_graph`."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    model.to(device)
    data = DeviceData(samples, lookup, device)
    step_fn = GraphedStep(model, data, config.batch_size, config, capture=capture)
    optimizer = step_fn.optimizer
    per_epoch = n_batches(len(samples), config.batch_size, 1)
    total = per_epoch * config.epochs
    epoch0, batch0, step = 0, 0, 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch0, batch0, step = state["epoch"], state["batch"], state["step"]
        log.info("resuming from %s at step %d (epoch %d, batch %d)", checkpoint, step, epoch0, batch0)
    resumed_from = step

    def checkpoint_now(epoch: int, batch: int) -> None:
        if checkpoint is not None:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "batch": batch, "step": step, "train_config": config.to_dict(), **(extra_state or {})}
            save_checkpoint(checkpoint, state)

    started = time.perf_counter()
    seen = 0
    losses: list[float] = []
    model.train()
    for epoch in range(epoch0, config.epochs):
        pending: list[torch.Tensor] = []
        first = batch0 if epoch == epoch0 else 0
        order = data.order(config.seed * 1000 + epoch)
        for b in range(first, per_epoch):
            rows = order[b * config.batch_size : (b + 1) * config.batch_size]
            loss = step_fn(rows)
            step += 1
            seen += int(rows.numel())
            pending.append(loss)
            if on_step is not None:
                on_step(step, total, float(loss))
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint_now(epoch, b + 1)
            if fail_after_steps is not None and step - resumed_from >= fail_after_steps:
                raise InjectedFailure(f"injected failure after {step} steps")
        losses = [float(x) for x in torch.stack(pending).cpu().tolist()] if pending else []
        checkpoint_now(epoch + 1, 0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {
        "steps": step,
        "resumed_from_step": resumed_from,
        "mean_loss_last_epoch": float(np.mean(losses)) if losses else float("nan"),
        "seconds": seconds,
        "samples_per_s": seen / seconds if seconds > 0 else float("nan"),
        "cuda_graph": step_fn.graph is not None,
    }
