"""`sidstream bench train`: training throughput of MCCA and DIN in one run, and their ratio.

Both models train on the same synthetic batches (history 20, Last.fm-sized catalog, paper
sizes: embedding 64, MLP 200-80, batch 512) for a fixed number of steps after a warm-up. CPU
always; CUDA with bf16 autocast (AMP) when a GPU is present, skipped otherwise.

Where batches come from (`data`): "pool" = batches built before the clock starts, copied to the
device each step (the model alone, the figures of earlier reports: `cpu`, `cuda_amp_bf16`);
"host" = built each step in numpy and copied, as the trainer's host path does; "resident" =
gathered on the device from device-resident tables (trainer.device_data), the trainer's path
off the CPU. `cpu_data_paths` compares host and resident on the CPU in the same run;
`cuda_amp_bf16_resident` is the eager resident path (`sidstream eval` on a GPU), with GPU
utilisation sampled while it runs. "graphed" = the retraining job's GPU step (trainer.graphed):
gather, forward, backward and fused Adam captured as CUDA graphs of `STEPS_PER_GRAPH` (8) steps
that read their rows at a device-side counter (the host only launches replays), without
(`cuda_amp_bf16_graphed`) and with torch.compile inside it (`cuda_amp_bf16_graphed_compiled`).
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from typing import Any

import click
import numpy as np
import torch

from sidcore.config import CodebookSettings
from trainer.codes import cached_codes
from trainer.device_data import DeviceData
from trainer.evaluate import prepare
from trainer.features import Lookup, batches
from trainer.graphed import WARMUP_STEPS, GraphedStep
from trainer.models import ModelConfig, build_model
from trainer.synthetic import make_synthetic
from trainer.train_loop import TrainConfig, _autocast


def _rss_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def gpu_utilisation() -> tuple[float | None, str | None]:
    """(torch.cuda.utilization() in percent, None) or (None, why it is not available)."""
    if not torch.cuda.is_available():
        return None, "no CUDA device"
    try:
        return float(torch.cuda.utilization()), None
    except Exception as exc:  # pynvml missing, NVML not readable in this container, ...
        return None, f"torch.cuda.utilization() failed: {type(exc).__name__}: {exc}"


def _batch_source(data: str, prep: Any, lookup: Any, dev: Any, batch_size: int, n: int) -> Any:
    """A function step -> batch dict on `dev` (see the module docstring for `data`)."""
    if data == "pool":
        pool = list(batches(prep.train, lookup, batch_size, shuffle_seed=0))[:n]
        return lambda i: {k: v.to(dev, non_blocking=True) for k, v in pool[i % len(pool)].items()}
    n_batches = (len(prep.train) + batch_size - 1) // batch_size
    if data == "host":
        order = np.random.default_rng(0).permutation(len(prep.train))
        return lambda i: {k: v.to(dev, non_blocking=True) for k, v in lookup.batch(
            prep.train, order[(i % n_batches) * batch_size : (i % n_batches + 1) * batch_size]).items()}
    if data == "resident":
        resident = DeviceData(prep.train, lookup, dev)
        rows = resident.order(0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return lambda i: resident.batch(rows[(i % n_batches) * batch_size : (i % n_batches + 1) * batch_size])
    raise ValueError(f"unknown data source {data!r}")


def _measure(name: str, model_config: Any, prep: Any, codes: dict, sizes: dict, device: str, amp: bool,
             steps: int, warmup: int, batch_size: int, data: str = "pool", compile_model: bool = False) -> dict[str, Any]:
    """Samples/s of `steps` training steps of one model after `warmup` steps, from the `data` path."""
    dev = torch.device(device)
    lookup = Lookup(prep.vocab.rows(prep.catalog.tolist()), codes)
    torch.manual_seed(0)
    model = build_model(model_config, prep.vocab.n_rows, sizes).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    utilisation: list[float] = []
    graphed = None
    if data == "graphed":  # the retraining job's GPU step (trainer.graphed), capture included in warm-up
        resident = DeviceData(prep.train, lookup, dev)
        graphed = GraphedStep(model, resident, batch_size, TrainConfig(lr=1e-3, amp=amp, compile=compile_model))
        seen, seconds, loss = _time_graphed(graphed, resident.order(0), dev, steps, warmup, batch_size, utilisation)
    else:
        next_batch = _batch_source(data, prep, lookup, dev, batch_size, steps + warmup)
        seen, seconds, loss = _time_eager(model, next_batch, dev, amp, steps, warmup, compile_model, utilisation)
    out = {"model": name, "samples_per_s": round(seen / seconds, 1), "steps": steps, "seconds": round(seconds, 3),
           "parameters": int(sum(p.numel() for p in model.parameters())), "final_loss": round(loss, 4)}
    if data != "pool" or compile_model:
        out.update(data=data, compile=compile_model)
    if graphed is not None:
        out["cuda_graph"] = graphed.graph is not None
    if dev.type == "cuda":
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        why = gpu_utilisation()[1]
        out["gpu_utilisation_pct"] = round(sum(utilisation) / len(utilisation), 1) if utilisation else None
        if not utilisation:
            out["gpu_utilisation_unavailable"] = why or "no sample taken"
    else:
        out["peak_rss_mb_after"] = round(_rss_peak_mb(), 1)
    return out


def _sample_utilisation(dev: Any, into: list[float]) -> None:
    if dev.type == "cuda":
        u, _ = gpu_utilisation()  # NVML's share of the last sample period with a kernel running
        if u is not None:
            into.append(u)


def _time_graphed(graphed: Any, order: Any, dev: Any, steps: int, warmup: int, batch_size: int,
                  utilisation: list[float]) -> tuple[int, float, float]:
    """(samples, seconds, last loss) of `steps` CUDA-graph steps, in chunks: the host only
    launches graphs and samples GPU utilisation between chunks."""
    graphed.start_epoch(order, 0)
    # past the eager warm-up steps and both captures (a group of steps_per_graph, and one step)
    warmup = max(warmup, WARMUP_STEPS + graphed.steps_per_graph + 1)

    def run_graphed(k: int) -> None:  # k full steps, the epoch's order starting again at its end
        while k > 0:
            if graphed.position == graphed.full_batches:
                graphed.start_epoch(order, 0)
            take = min(k, graphed.full_batches - graphed.position)
            graphed.steps(take)
            k -= take

    run_graphed(warmup)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    sample_every = max(1, steps // 10)
    chunk, done = max(graphed.steps_per_graph, sample_every // graphed.steps_per_graph * graphed.steps_per_graph), 0
    while done < steps:
        k = min(chunk, steps - done)
        run_graphed(k)
        done += k
        _sample_utilisation(dev, utilisation)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    loss = graphed.losses(0, graphed.full_batches)[max(0, graphed.position - 1)]
    return steps * batch_size, seconds, float(loss)


def _time_eager(model: Any, next_batch: Any, dev: Any, amp: bool, steps: int, warmup: int, compile_model: bool,
                utilisation: list[float]) -> tuple[int, float, float]:
    """(samples, seconds, last loss) of `steps` eager Adam steps after `warmup` untimed ones."""
    forward = torch.compile(model) if compile_model else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    sample_every = max(1, steps // 10)
    seen, started = 0, 0.0
    for i in range(steps + warmup):
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        if i >= warmup and (i - warmup) % sample_every == sample_every - 1:
            _sample_utilisation(dev, utilisation)
        batch = next_batch(i)
        with _autocast(dev, amp):
            logits = forward(batch)
        loss = loss_fn(logits.float(), batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            seen += int(batch["label"].shape[0])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return seen, time.perf_counter() - started, float(loss.detach())


@click.command("train")
@click.option("--json", "as_json", is_flag=True)
@click.option("--quick", is_flag=True, help="fewer steps, smaller synthetic data")
@click.option("--steps", type=int, default=None, help="timed steps per model [60; 10 with --quick]")
@click.option("--batch-size", default=512, show_default=True)
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the models of the resident CUDA runs")
@click.option("--graph-compile/--no-graph-compile", default=True, show_default=True,
              help="also time the CUDA-graph step with torch.compile inside it")
def command(as_json: bool, quick: bool, steps: int | None, batch_size: int, compile_model: bool,
            graph_compile: bool) -> None:
    """Training samples/s of MCCA vs DIN (ratio), peak memory; CUDA + AMP when available."""
    steps = steps or (10 if quick else 60)
    warmup = 2 if quick else 5
    ds = make_synthetic(n_users=300 if quick else 2000, n_items=1200 if quick else 12000,
                        events_per_user=20 if quick else 40, dim=64, modalities=("text",), seed=0)
    prep = prepare(ds, test_fraction=0.2)
    codes, sizes = cached_codes(prep.embeddings, CodebookSettings(method="rq", codebook_size=32 if quick else 64, device="auto"), None)
    models = {"din": ModelConfig(kind="din"), "din+sid": ModelConfig(kind="din", sid_codebook="text"),
              "mcca": ModelConfig(kind="mcca")}
    report: dict[str, Any] = {"bench": "train", "quick": quick, "batch_size": batch_size, "history_len": 20,
                              "emb_dim": 64, "train_rows": len(prep.train), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    rss_before = _rss_peak_mb()
    cpu = {n: _measure(n, c, prep, codes, sizes, "cpu", False, steps, warmup, batch_size) for n, c in models.items()}
    report["cpu"] = cpu
    report["cpu_ratio_mcca_over_din"] = round(cpu["mcca"]["samples_per_s"] / cpu["din"]["samples_per_s"], 3)
    report["peak_rss_mb"] = round(_rss_peak_mb(), 1)
    report["peak_rss_mb_before_training"] = round(rss_before, 1)
    paths = {}
    for n, c in models.items():  # host vs resident batches, same run, same machine state
        host = _measure(n, c, prep, codes, sizes, "cpu", False, steps, warmup, batch_size, data="host")
        resident = _measure(n, c, prep, codes, sizes, "cpu", False, steps, warmup, batch_size, data="resident")
        paths[n] = {"host_samples_per_s": host["samples_per_s"], "resident_samples_per_s": resident["samples_per_s"],
                    "ratio_resident_over_host": round(resident["samples_per_s"] / host["samples_per_s"], 3)}
    report["cpu_data_paths"] = paths
    report["gpu_utilisation"], why = gpu_utilisation()
    if why:
        report["gpu_utilisation_unavailable"] = why
    report.update(_cuda_rows(models, prep, codes, sizes, steps, warmup, batch_size, compile_model, graph_compile))
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    _print_report(report)


def _cuda_rows(models: dict[str, Any], prep: Any, codes: dict, sizes: dict, steps: int, warmup: int, batch_size: int,
               compile_model: bool, graph_compile: bool) -> dict[str, Any]:
    """The CUDA rows of the report (pool, resident and graphed paths), or why they were skipped."""
    report: dict[str, Any] = {}
    if torch.cuda.is_available():
        gpu = {n: _measure(n, c, prep, codes, sizes, "cuda", True, steps * 5, warmup, batch_size) for n, c in models.items()}
        report["cuda_amp_bf16"] = gpu
        report["cuda_ratio_mcca_over_din"] = round(gpu["mcca"]["samples_per_s"] / gpu["din"]["samples_per_s"], 3)
        res = {n: _measure(n, c, prep, codes, sizes, "cuda", True, steps * 5, warmup, batch_size, data="resident",
                           compile_model=compile_model) for n, c in models.items()}
        report["cuda_amp_bf16_resident"] = res
        report["cuda_resident_over_pool"] = {n: round(res[n]["samples_per_s"] / gpu[n]["samples_per_s"], 3) for n in gpu}
        # the retraining job's default GPU step: one CUDA graph per step (trainer.graphed), with and
        # without torch.compile inside it; settings.train.gpu_compile picks one for the job
        for key, comp in (("cuda_amp_bf16_graphed", False), ("cuda_amp_bf16_graphed_compiled", True)):
            if comp and not graph_compile:
                continue
            try:
                report[key] = {n: _measure(n, c, prep, codes, sizes, "cuda", True, steps * 20, warmup, batch_size,
                                           data="graphed", compile_model=comp) for n, c in models.items()}
            except Exception as exc:  # noqa: BLE001 - keep the rows measured so far; say why this one failed
                report[key] = {"failed": f"{type(exc).__name__}: {exc}"[:2000]}
                continue
            report[key.replace("cuda_amp_bf16_", "cuda_") + "_over_resident"] = {
                n: round(report[key][n]["samples_per_s"] / res[n]["samples_per_s"], 3) for n in res}
        report["cuda_device"] = torch.cuda.get_device_name()
    else:
        report["cuda_amp_bf16"] = {"skipped": "no CUDA device"}
        report["cuda_amp_bf16_resident"] = {"skipped": "no CUDA device"}
    return report


def _print_report(report: dict[str, Any]) -> None:
    for name, r in report["cpu"].items():
        click.echo(f"cpu  {name:8s} {r['samples_per_s']:>10.0f} samples/s  ({r['parameters']:,} parameters)")
    click.echo(f"MCCA / DIN throughput ratio: {report['cpu_ratio_mcca_over_din']}; peak RSS {report['peak_rss_mb']} MB")
    for name, r in report["cpu_data_paths"].items():
        click.echo(f"cpu  {name:8s} host batches {r['host_samples_per_s']:>10.0f}, resident {r['resident_samples_per_s']:>10.0f}"
                   f" samples/s (resident / host {r['ratio_resident_over_host']})")
    if "skipped" in report["cuda_amp_bf16"]:
        click.echo(f"cuda: skipped (no CUDA device); GPU utilisation: {report.get('gpu_utilisation_unavailable')}")
    else:
        click.echo(f"cuda MCCA / DIN ratio: {report['cuda_ratio_mcca_over_din']}")
        for name, r in report["cuda_amp_bf16_resident"].items():
            click.echo(f"cuda {name:8s} resident {r['samples_per_s']:>10.0f} samples/s, GPU utilisation "
                       f"{r['gpu_utilisation_pct']}% (pool: {report['cuda_amp_bf16'][name]['samples_per_s']:.0f})")
        for key in ("cuda_amp_bf16_graphed", "cuda_amp_bf16_graphed_compiled"):
            if "failed" in report.get(key, {}):
                click.echo(f"cuda {key[14:]}: failed: {report[key]['failed']}")
                continue
            for name, r in report.get(key, {}).items():
                click.echo(f"cuda {name:8s} {key[14:]:17s} {r['samples_per_s']:>10.0f} samples/s, GPU utilisation "
                           f"{r['gpu_utilisation_pct']}%")
