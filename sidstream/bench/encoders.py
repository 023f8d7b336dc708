"""`sidstream bench encoders`: encoder throughput against the raw model forward pass, same run.

For each model, two timings on identical inputs:
- `encode`: the public `encode()` path on worker-sized micro-batches (text: validation,
  tokenisation, length bucketing under the token budget, forward, pooling, L2; audio: windowing,
  mel front-end, forward, pooling, L2) -- what a worker pays;
- `raw`: only the model forward on inputs prepared beforehand (text: the same token batches;
  musicnn: the same log-mel patches; HF-free logmel has no learned model, so its raw pass is the
  mel statistics on the same stacked windows).
ratio = raw seconds / encode seconds (1.0: no overhead; goal >= 0.9). Every row names its device,
dtype and whether the encode path was the pipelined one (encoders.pipeline: on by default off the
CPU). On CUDA the text row adds `one_call_*`: the same texts in a single encode() call, where the
pipeline can overlap tokenisation with the forward pass across buckets. Each timing is the best of
`repeats` alternating runs. Peak memory: process max RSS after each model, and CUDA peak
allocation when on a GPU.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch

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
           "tokens": sum(b.tokens for b in prepared), "peak_rss_mb": round(_max_rss_mb(), 1)}
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
            "peak_rss_mb": round(_max_rss_mb(), 1)}


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
