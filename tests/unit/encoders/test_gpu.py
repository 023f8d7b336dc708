"""GPU paths: run only where CUDA is present (skipped cleanly elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_text_encoder_fp16_on_cuda_matches_cpu():
    from encoders import load_text_encoder

    texts = ["Radiohead. Tags: alternative, rock", "Daft Punk. Tags: electronic, house"]
    cpu = load_text_encoder().encode(texts)
    gpu = load_text_encoder(device="cuda", dtype="float16").encode(texts)
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    assert (np.sum(cpu * gpu, axis=1) > 0.999).all()


def test_musicnn_on_cuda_matches_cpu():
    from encoders import load_audio_encoder

    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000 * 4)).astype(np.float32)
    cpu = load_audio_encoder("musicnn").encode([wave])
    gpu = load_audio_encoder("musicnn", device="cuda").encode([wave])
    assert float(np.sum(cpu * gpu)) > 0.999
