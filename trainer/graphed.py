"""The ranker's training step as one CUDA graph: gather -> forward (bf16) -> BCE -> backward -> Adam.

At batch 512 a DIN or MCCA step on a GPU is launch-bound: a hundred-odd small kernels, each
a few microseconds, issued one by one from Python. Here the whole step -- the batch gather
from the device-resident tables (trainer.device_data) included -- is captured once and then
replayed. A step reads its rows from a static copy of the epoch's order at a device-side
batch counter, and writes its loss to a static per-epoch buffer, so `STEPS_PER_GRAPH`
consecutive steps are one graph and the host launches one replay per group: with one graph
per step (a host copy of the indices and a loss tensor each), compiled DIN on an H200 ran at
1.54M samples/s with the GPU 48 % busy. Optionally the model is `torch.compile`d first (fewer,
fused kernels) inside the same capture. Adam runs fused and `capturable` on CUDA (its step
counters stay on the device).

The loop mirrors `trainer.train_loop.train_model` -- the same batches in the same order
(DeviceData), checkpoints of the same form, resume, `on_step`, the crash drill -- so the
retraining job uses it on a single CUDA device (JobConfig.cuda_graph). Steps run in chunks
that end where a checkpoint or the crash drill is due (and every `PROGRESS_EVERY` steps when
`on_step` is given: one read of the losses per chunk). Capture needs a fixed shape: the first
`WARMUP_STEPS` full batches run eagerly on a side stream (they are real steps: lazy state,
compilation), a chunk's remainder replays a one-step graph, and a short last batch of an epoch
runs eagerly through the uncompiled model. With `capture=False` (any device) every step is eager: on the CPU the
parameters are then bit-identical to `train_model(data_path="device")`
(tests/unit/trainer/test_trainer_graphed.py), which is how the loop is tested without a GPU; the capture
itself is compared against eager training on CUDA (tests/unit/trainer/test_trainer_graphed.py, GPU only).

The offline evaluation (`sidstream eval`, docs/results) keeps train_model's eager loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from trainer.device_data import DeviceData
from trainer.features import Lookup, Samples, n_batches
from trainer.train_loop import RunState, TrainConfig, distributed, prepare_model, resolve_device

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager full-batch steps before the capture
STEPS_PER_GRAPH = 8  # full steps per graph replay
PROGRESS_EVERY = 64  # with on_step: steps between reads of the losses (each read waits for the GPU)


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
    """An epoch's full batches, stepped from device-side state, `steps_per_graph` steps per replay.

    `start_epoch(order, first)` copies the epoch's row order to a static buffer and sets the
    device-side batch counter; `steps(k)` runs the next k full batches. A step takes its rows
    from the buffer at the counter, trains, writes its loss to a static per-epoch buffer and
    advances the counter, all on the device: the host only launches graphs (no per-step copy
    of indices, no per-step loss tensor). With capture, whole groups of `steps_per_graph` steps
    are one graph (at batch 512 the host, not the GPU, set the pace of one graph per step:
    1.54M samples/s with the GPU 48 % busy, H200), and the remainder of a chunk replays a
    one-step graph. `tail(rows)` runs an epoch's short last batch eagerly, uncompiled.
    """

    def __init__(self, model: nn.Module, data: DeviceData, batch_size: int, config: TrainConfig,
                 capture: bool | None = None, steps_per_graph: int = STEPS_PER_GRAPH) -> None:
        self.device = data.device
        on_cuda = self.device.type == "cuda"
        self.capture = on_cuda if capture is None else capture
        if self.capture and not on_cuda:
            raise ValueError("CUDA graph capture needs a CUDA device")
        if steps_per_graph < 1:
            raise ValueError(f"steps_per_graph must be >= 1, got {steps_per_graph}")
        self.model, self.data, self.batch_size, self.amp = model, data, batch_size, config.amp
        self.steps_per_graph = steps_per_graph
        extra: dict[str, Any] = {"capturable": True, "fused": True} if on_cuda else {}
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **extra)
        self.forward: Callable[[dict[str, torch.Tensor]], torch.Tensor] = (
            torch.compile(model) if config.compile else model)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # steps per replay -> graph
        self.warm = 0
        self.full_batches = len(data) // batch_size
        self.static_order = torch.zeros(max(1, self.full_batches * batch_size), dtype=torch.long, device=self.device)
        self.static_step = torch.zeros((), dtype=torch.long, device=self.device)
        self.static_losses = torch.zeros(max(1, self.full_batches), dtype=torch.float32, device=self.device)
        self.offsets = torch.arange(batch_size, dtype=torch.long, device=self.device)
        self.position = 0  # host copy of static_step

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        """A captured graph, if any (for reports)."""
        return next(iter(self.graphs.values()), None)

    def start_epoch(self, order: torch.Tensor, first: int = 0) -> None:
        """The epoch's row order (all rows, on the device) and the batch to start from."""
        n = self.full_batches * self.batch_size
        if n:
            self.static_order.copy_(order[:n])
        self.static_step.fill_(first)
        self.position = first

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

    def _rows(self) -> torch.Tensor:
        """The rows of the batch at the device-side counter (== order[b * B : (b + 1) * B])."""
        return self.static_order.index_select(0, self.offsets + self.static_step * self.batch_size)

    def _record(self, loss: torch.Tensor) -> None:
        self.static_losses.index_copy_(0, self.static_step.view(1), loss.detach().float().view(1))
        self.static_step.add_(1)

    def _step_eager(self) -> None:
        self._record(self._eager(self._rows(), self.forward))

    def _step_in_graph(self) -> None:
        # grads exist (the warm-up made them) and stay where they are: zeroed, then accumulated
        self.optimizer.zero_grad(set_to_none=False)
        loss = self._loss(self._rows(), self.forward)
        loss.backward()
        self.optimizer.step()
        self._record(loss)

    def steps(self, k: int) -> None:
        """Run the next `k` full batches of the epoch."""
        if k < 0 or self.position + k > self.full_batches:
            raise ValueError(f"{k} steps from batch {self.position} run past the epoch's {self.full_batches} full batches")
        self.position += k
        if not self.capture:
            for _ in range(k):
                self._step_eager()
            return
        while k and self.warm < WARMUP_STEPS:  # eager, on a side stream, before any capture
            self.warm += 1
            k -= 1
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                self._step_eager()
            current.wait_stream(side)
        for size in (self.steps_per_graph, 1):
            while k >= size:
                self._graph(size).replay()
                k -= size

    def _graph(self, size: int) -> torch.cuda.CUDAGraph:
        if size not in self.graphs:
            torch.cuda.synchronize(self.device)
            step = self.static_step.clone()
            graph = torch.cuda.CUDAGraph()
            pool = self.graph.pool() if self.graph is not None else None
            with torch.cuda.graph(graph, pool=pool):
                for _ in range(size):
                    self._step_in_graph()
            # capture records the kernels without running them; the counter is put back all the
            # same, since the replays that follow must start from it (the host position is untouched)
            torch.cuda.synchronize(self.device)
            self.static_step.copy_(step)
            self.graphs[size] = graph
        return self.graphs[size]

    def losses(self, first: int, last: int) -> torch.Tensor:
        """The losses of full batches first..last-1 of this epoch (a device tensor)."""
        return self.static_losses[first:last]

    def tail(self, rows: torch.Tensor) -> torch.Tensor:
        """An epoch's short last batch: eager, through the uncompiled model."""
        return self._eager(rows, self.model)


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
    device = prepare_model(model, config)
    data = DeviceData(samples, lookup, device)
    step_fn = GraphedStep(model, data, config.batch_size, config, capture=capture)
    per_epoch = n_batches(len(samples), config.batch_size, 1)
    total = per_epoch * config.epochs
    run = RunState(model, step_fn.optimizer, config, device, checkpoint, extra_state, fail_after_steps)

    run.start()
    losses: list[float] = []
    model.train()
    full = step_fn.full_batches
    for epoch in range(run.epoch0, config.epochs):
        first = run.first_batch(epoch)
        order = data.order(config.seed * 1000 + epoch)
        step_fn.start_epoch(order, min(first, full))
        b = first
        while b < full:  # full batches, in chunks that end where a checkpoint, the drill or on_step is due
            k = min(full - b, run.steps_until_due() or full)
            if on_step is not None:
                k = min(k, PROGRESS_EVERY)
            step_fn.steps(k)
            if on_step is not None:
                for i, value in enumerate(step_fn.losses(b, b + k).tolist()):
                    on_step(run.step + i + 1, total, float(value))
            b += k
            run.count(k, k * config.batch_size)
            run.due(epoch, b)
        pending = [step_fn.losses(first, full)] if first < full else []
        if b < per_epoch:  # the short last batch
            rows = order[full * config.batch_size :]
            loss = step_fn.tail(rows)
            run.count(1, int(rows.numel()))
            pending.append(loss.float().view(1))
            if on_step is not None:
                on_step(run.step, total, float(loss))
            run.due(epoch, per_epoch)
        losses = [float(x) for x in torch.cat(pending).cpu().tolist()] if pending else []
        run.save(epoch + 1, 0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {
        **run.result(losses),
        "cuda_graph": step_fn.graph is not None,
        "steps_per_graph": step_fn.steps_per_graph if step_fn.graph is not None else None,
    }
