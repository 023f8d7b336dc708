"""`bench encoders`' stage breakdown runs the encode path's own steps: its embeddings equal
encode()'s, for the plain and the pipelined (forced on, on the CPU) paths, text and audio."""

from __future__ import annotations

import numpy as np
import pytest

from encoders import load_audio_encoder, load_text_encoder
from sidstream.bench.encoders import _audio_stages, _text_stages

pytestmark = pytest.mark.unit

TEXTS = ["rock", "Nebula by Max McCracken from the album Drift. Tags: ambient, electronic, space.",
         "jazz " * 40, "x", "piano", "a much longer sentence about a melancholic synth track " * 5]


@pytest.mark.parametrize("pipeline", ["off", "on"])
def test_text_stages_give_encode_output(pipeline):
    encoder = load_text_encoder(None, max_length=64, token_budget=128, pipeline=pipeline)
    chunks = [TEXTS[:4], TEXTS[4:]]
    stages = _text_stages(encoder, chunks, repeats=2)
    report = stages.report(0.5)
    expected = ["validate", "tokenize", *(["copy_in"] if pipeline == "on" else []), "forward", "pool", "copy_out_l2"]
    assert list(report["ms"]) == expected and report["encode_ms"] == 500.0
    assert report["serial_ms"] == pytest.approx(sum(report["ms"].values()), abs=0.06 * len(expected))  # rounding
    assert len(stages.outputs) == len(chunks)
    for chunk, got in zip(chunks, stages.outputs, strict=True):
        np.testing.assert_allclose(got, encoder.encode(chunk), atol=1e-5)


@pytest.mark.parametrize("spec", ["logmel", "musicnn"])
def test_audio_stages_give_encode_output(spec):
    encoder = load_audio_encoder(spec, window_s=3.0, max_windows=3, window_batch=2)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in (7.0, 2.0, 11.0)]
    chunks = [waves[:2], waves[2:]]
    stages = _audio_stages(encoder, chunks, repeats=1)
    names = list(stages.report(1.0)["ms"])
    assert names == (["windows", "stack", "front_end", "network", "pool_copy_out"] if spec == "musicnn"
                     else ["windows", "stack", "front_end", "pool_copy_out"])
    for chunk, got in zip(chunks, stages.outputs, strict=True):
        np.testing.assert_allclose(got, encoder.encode(chunk), atol=1e-5)
