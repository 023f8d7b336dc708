"""`sidstream bench encoders`: encoder throughput against the raw model forward pass, same run.

For each model, two timings on identical inputs:
- `encode`: the public `encode()` path on worker-sized micro-batches (text: validation,
  tokenisation, length bucketing under the token budget, forward, pooling, L2; audio: windowing,
  mel front-end, forward, pooling, L2) -- what a worker pays;
- `raw`: only the model forward on inputs prepared beforehand (text: the same token batches;
  musicnn: the same log-mel patches; HF-free logmel has no learned model, so its raw pass is the
  mel statistics on the same stacked windows).
ratio = raw seconds / encode seconds (1.0: no overhead; the speed goal on a GPU is >= 0.8). Every row names its device,
dtype and whether the encode path was the pipelined one (encoders.pipeline: on by default off the
CPU). On CUDA the text row adds `one_call_*`: the same texts in a single encode() call, where the
pipeline can overlap tokenisation with the forward pass across buckets. Each timing is the best of
`repeats` alternating runs. `stages` times the same calls `repeats` more times step by step, each step
closed by a device sync, each step's best pass kept (validate / tokenize / copy_in / forward / pool / copy_out_l2 for text;
windows / stack / front_end / network / pool_copy_out for audio): their sum (`serial_ms`) set
beside `encode_ms` shows how much the pipeline's overlap hides and which step a call waits on.
Peak memory: process max RSS after each model, and CUDA peak
allocation when on a GPU.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np
import torch

from encoders.base import l2_normalise

T = TypeVar("T")
AUDIO_DIR = Path("/usr/share/games/singularity/music")


def _best(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


class _Stages:
    """Serial stage timings: each stage is closed by a device sync, so the stages add up to the
    path run without overlap; set beside the path's own time, they show what the overlap hides
    and where a call's time goes (ms summed over every call of one pass)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.outputs: list[np.ndarray] = []  # each call's embeddings (last pass): tests hold them to encode()'s

    def passes(self, chunks: list[T], repeats: int) -> Iterator[T]:
        """The chunks, `repeats` times over, each pass closed by next_pass; `outputs` holds the
        last pass's embeddings."""
        for _ in range(repeats):
            self.outputs = []
            yield from chunks
            self.next_pass()

    def next_pass(self) -> None:
        """Close one pass over the calls: each stage keeps its best pass (as the timings do)."""
        for name, ms in self.ms.items():
            self.best[name] = min(ms, self.best.get(name, float("inf")))
        self.ms = {}

    def __call__(self, name: str, fn: Callable[[], T]) -> T:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ms[name] = self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - start)
        return value

    def report(self, encode_s: float) -> dict:
        self.next_pass()
        return {"ms": {k: round(v, 1) for k, v in self.best.items()}, "serial_ms": round(sum(self.best.values()), 1),
                "encode_ms": round(1000 * encode_s, 1)}


def _text_stages(encoder: Any, chunks: list[list[str]], repeats: int) -> _Stages:
    """The text path's steps, one call per chunk, as the pipelined (or plain) path runs them."""
    from encoders.pipeline import use_pipeline
    from encoders.text import validate_text

    stages = _Stages()
    pipelined = use_pipeline(encoder.pipeline, encoder.device)
    with torch.inference_mode():
        for chunk in stages.passes(chunks, repeats):
            stages("validate", lambda c=chunk: [validate_text(t) for t in c])
            if pipelined:
                batches = stages("tokenize", lambda c=chunk: encoder.tokenize_bucket(c, np.arange(len(c))))
                batches = stages("copy_in", lambda b=batches: [
                    type(x)(x.indices, {k: v.to(encoder.device, non_blocking=True) for k, v in x.inputs.items()})
                    for x in b])
            else:
                batches = stages("tokenize", lambda c=chunk: encoder.tokenize_batches(c))
            hidden = stages("forward", lambda b=batches: [encoder.forward_batch(x) for x in b])
            pooled = stages("pool", lambda b=batches, h=hidden: [
                encoder.pool(y, x.inputs["attention_mask"]) for x, y in zip(b, h, strict=True)])
            order = np.concatenate([np.asarray(x.indices, dtype=np.int64) for x in batches])
            stages.outputs.append(stages("copy_out_l2", lambda p=pooled, o=order: l2_normalise(
                torch.cat(p).cpu().numpy()[np.argsort(o)])))
    return stages


def _audio_stages(encoder: Any, chunks: list[list[np.ndarray]], repeats: int) -> _Stages:
    """The audio path's steps, one call per chunk of tracks: windowing (with validation),
    stacking into (pinned) micro-batches, the front-end (musicnn: log-mel patches), the network,
    and the mean over patches, windows and L2 with the copy back."""
    from encoders.audio import mean_by_owner

    stages = _Stages()
    with torch.inference_mode():
        for chunk in stages.passes(chunks, repeats):
            windows, owners = stages("windows", lambda c=chunk: encoder.windows_of(c))
            batches = stages("stack", lambda w=windows: encoder.micro_batches(w))
            rows = []
            for _, stacked in batches:
                if hasattr(encoder, "patches"):
                    patches, per_window = stages("front_end", lambda x=stacked: encoder.patches(x))
                    out = stages("network", lambda x=patches: encoder.model(x)[encoder.output])
                    rows.append(out.reshape(stacked.shape[0], per_window, -1).mean(dim=1))
                else:
                    rows.append(stages("front_end", lambda x=stacked: encoder.embed_windows(x)))
            order = np.concatenate([np.asarray(c, dtype=np.int64) for c, _ in batches])
            stages.outputs.append(stages("pool_copy_out", lambda r=rows, o=order, w=owners, n=len(chunk): l2_normalise(
                mean_by_owner(torch.cat(r).float().cpu().numpy()[np.argsort(o)], w, n))))
    return stages


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _texts(n: int) -> list[str]:
    try:
        from encoders.catalog import track_text
        from sidcore.catalog import lastfm_tracks
        from sidcore.config import get_settings

        tracks = lastfm_tracks(get_settings().lastfm_source, n)
        texts = [track_text(t) for t in tracks]
        if len(texts) >= n:
            return texts[:n]
    except Exception:  # noqa: BLE001 - the bench only needs realistic texts; fall back to synthetic ones
        pass
    words = "ambient synth guitar rock jazz piano melancholic upbeat drums vocals electronic dance".split()
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, size=int(rng.integers(4, 60)))) for _ in range(n)]


def bench_text(device: str, dtype: str, n: int, batch: int, repeats: int, one_call: bool = False) -> dict:
    from encoders import load_text_encoder
    from encoders.pipeline import use_pipeline

    encoder = load_text_encoder(None, device=device, dtype=dtype)
    texts = _texts(n)
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    prepared = [b for chunk in chunks for b in encoder.tokenize_batches(chunk)]
    encoder.encode(chunks[0])  # warm-up

    def run_encode() -> None:
        for chunk in chunks:
            encoder.encode(chunk)

    def run_raw() -> None:
        for token_batch in prepared:
            encoder.forward_batch(token_batch)

    raw_s = encode_s = float("inf")
    for _ in range(repeats):  # alternate so that drift hits both
        raw_s = min(raw_s, _best(run_raw, 1))
        encode_s = min(encode_s, _best(run_encode, 1))
    row = {"model_id": encoder.model_id, "device": str(encoder.device), "dtype": dtype,
           "pipelined": use_pipeline(encoder.pipeline, encoder.device), "items": len(texts),
           "micro_batch": batch, "texts_per_s": round(len(texts) / encode_s, 1),
           "raw_texts_per_s": round(len(texts) / raw_s, 1), "ratio_vs_raw": round(raw_s / encode_s, 3),
           "tokens": sum(b.tokens for b in prepared), "peak_rss_mb": round(_max_rss_mb(), 1),
           "stages": _text_stages(encoder, chunks, repeats).report(encode_s)}
    if one_call:
        one_s = min(_best(lambda: encoder.encode(texts), 1) for _ in range(repeats))
        row["one_call_texts_per_s"] = round(len(texts) / one_s, 1)
        row["one_call_ratio_vs_raw"] = round(raw_s / one_s, 3)
    return row


def _waveforms(n_tracks: int, seconds: float) -> list[np.ndarray]:
    from encoders import decode_audio

    files = sorted(AUDIO_DIR.glob("*.ogg"))[:n_tracks] if AUDIO_DIR.is_dir() else []
    if files:
        return [decode_audio(f, 16000)[: int(seconds * 16000)] for f in files]
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32) for _ in range(n_tracks)]


def bench_audio(spec: str, device: str, waves: list[np.ndarray], batch: int, repeats: int) -> dict:
    from encoders import load_audio_encoder
    from encoders.pipeline import use_pipeline

    encoder = load_audio_encoder(spec, device=device)
    chunks = [waves[i : i + batch] for i in range(0, len(waves), batch)]
    # the same windows, stacked exactly as encode() stacks them, prepared outside the timing
    stacked = [s for chunk in chunks for _, s in encoder.micro_batches(encoder.windows_of(chunk)[0])]
    window_seconds = sum(s.shape[0] * s.shape[1] for s in stacked) / encoder.sample_rate
    if hasattr(encoder, "patches"):  # musicnn: pre-compute the log-mel patches; raw = network only
        with torch.inference_mode():
            inputs = [encoder.patches(s)[0] for s in stacked]

        def forward(x: torch.Tensor) -> object:
            return encoder.model(x)
    else:
        inputs = stacked

        def forward(x: torch.Tensor) -> object:
            return encoder.embed_windows(x)

    encoder.encode(chunks[0][:1])  # warm-up

    def run_encode() -> None:
        for chunk in chunks:
            encoder.encode(chunk)

    @torch.inference_mode()
    def run_raw() -> None:
        for x in inputs:
            forward(x)

    raw_s = encode_s = float("inf")
    for _ in range(repeats):
        raw_s = min(raw_s, _best(run_raw, 1))
        encode_s = min(encode_s, _best(run_encode, 1))
    track_seconds = sum(len(w) for w in waves) / encoder.sample_rate
    return {"model_id": encoder.model_id, "device": device, "dtype": "float32",  # musicnn/logmel run in fp32
            "pipelined": use_pipeline(encoder.pipeline, getattr(encoder, "device", torch.device("cpu"))),
            "tracks": len(waves), "micro_batch": batch,
            "track_audio_s": round(track_seconds, 1), "windowed_audio_s": round(window_seconds, 1),
            "audio_s_per_s": round(window_seconds / encode_s, 1),
            "track_audio_s_per_s": round(track_seconds / encode_s, 1),
            "raw_audio_s_per_s": round(window_seconds / raw_s, 1), "ratio_vs_raw": round(raw_s / encode_s, 3),
            "peak_rss_mb": round(_max_rss_mb(), 1), "stages": _audio_stages(encoder, chunks, repeats).report(encode_s)}


@click.command()
@click.option("--quick", is_flag=True, help="fewer items and repeats (about a minute on 2 cores)")
@click.option("--json", "as_json", is_flag=True, help="one-line JSON")
@click.option("--cpu/--no-cpu", "with_cpu", default=True, show_default=True,
              help="also time the CPU rows (--no-cpu: only the CUDA rows, e.g. on a GPU host)")
def command(quick: bool, as_json: bool, with_cpu: bool) -> None:
    """Texts/s and audio-seconds/s per encoder, each as a ratio to the raw forward pass."""
    n_texts, repeats = (256, 2) if quick else (1024, 3)
    n_tracks, seconds = (3, 60.0) if quick else (8, 120.0)
    result: dict = {"host": {"cpus": torch.get_num_threads(), "torch": torch.__version__,
                             "machine": platform.machine()},
                    "quick": quick, "text": [], "audio": []}
    waves = _waveforms(n_tracks, seconds)
    result["audio_source"] = str(AUDIO_DIR) if AUDIO_DIR.is_dir() else "synthetic noise"
    if with_cpu:
        result["text"].append(bench_text("cpu", "float32", n_texts, 64, repeats))
        for spec in ("logmel", "musicnn"):
            result["audio"].append(bench_audio(spec, "cpu", waves, 4, repeats))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        cuda = {"device": torch.cuda.get_device_name(0)}
        cuda["text_fp16"] = bench_text("cuda", "float16", n_texts * 4, 256, repeats, one_call=True)
        cuda["audio"] = [bench_audio(spec, "cuda", waves, 8, repeats) for spec in ("logmel", "musicnn")]
        cuda["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["cuda"] = cuda
    else:
        result["cuda"] = {"skipped": "torch.cuda.is_available() is False"}
    click.echo(json.dumps(result) if as_json else json.dumps(result, indent=2))
