"""The pipelined encode path (encoders.pipeline): forced on, on the CPU, it agrees with the plain
path; errors in the background thread reach the caller; CUDA checks run only with a GPU."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from encoders import EncoderInputError, load_text_encoder
from encoders.pipeline import prefetch, use_pipeline
from encoders.text import TextEncoder

pytestmark = pytest.mark.unit

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is False")

TEXTS = [
    "rock",
    "Nebula by Max McCracken from the album Drift. Tags: ambient, electronic, space.",
    "a " * 600,  # truncated at max_length
    "Ünïcödé ♪ 音楽",
    "heavy metal guitar riffs",
    "jazz " * 40,
    "x",
    "Lyrics: " + "la la land " * 25,
    "piano",
    "a much longer sentence about a melancholic synth track " * 5,
]


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "encoder-prefetch" and t.is_alive()]


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(None, device="cpu", dtype="float32", max_length=64, token_budget=256)


def _with(encoder: TextEncoder, **changes: object) -> TextEncoder:
    kwargs = dict(device=encoder.device, max_length=encoder.max_length, token_budget=encoder.token_budget,
                  pipeline=encoder.pipeline, pipeline_bucket=encoder.pipeline_bucket)
    kwargs.update(changes)
    return TextEncoder(encoder.model, encoder.tokenizer, encoder.model_id, **kwargs)  # type: ignore[arg-type]


# -- prefetch itself --
def test_prefetch_keeps_order_and_stops_its_thread():
    assert list(prefetch(lambda x: x * x, range(20), depth=3)) == [x * x for x in range(20)]
    assert list(prefetch(lambda x: x, [])) == []
    for value in prefetch(lambda x: x, range(1000), depth=2):
        if value == 3:
            break  # leaving early must not leave a thread blocked on a full queue
    assert not _prefetch_threads()


def test_prefetch_raises_the_workers_error_at_its_turn():
    def prepare(x: int) -> int:
        if x == 4:
            raise RuntimeError("tokeniser broke on item 4")
        return x

    seen = []
    with pytest.raises(RuntimeError, match="item 4"):
        for value in prefetch(prepare, range(10)):
            seen.append(value)
    assert seen == [0, 1, 2, 3]  # everything before the failure was delivered
    assert not _prefetch_threads()


def test_prefetch_caller_error_stops_the_worker():
    with pytest.raises(ValueError, match="caller"):
        for _ in prefetch(lambda x: x, range(10_000), depth=1):
            raise ValueError("caller failed")
    assert not _prefetch_threads()


def test_use_pipeline_modes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_pipeline("auto", cpu) and use_pipeline("auto", cuda)
    assert use_pipeline("on", cpu) and not use_pipeline("off", cuda)
    with pytest.raises(ValueError, match="pipeline"):
        use_pipeline("sometimes", cpu)


# -- text --
@pytest.mark.parametrize("bucket", [1, 3, 512])
def test_text_pipelined_matches_plain(minilm, bucket):
    plain = _with(minilm, pipeline="off").encode(TEXTS)
    piped = _with(minilm, pipeline="on", pipeline_bucket=bucket).encode(TEXTS)
    assert piped.shape == plain.shape == (len(TEXTS), 384) and piped.dtype == np.float32
    # batch mates differ between the paths (buckets by characters), so float rounding may differ
    np.testing.assert_allclose(piped, plain, atol=1e-5)
    assert not _prefetch_threads()


def test_text_pipelined_edge_sizes(minilm):
    piped = _with(minilm, pipeline="on", pipeline_bucket=2)
    assert piped.encode([]).shape == (0, 384)
    np.testing.assert_allclose(piped.encode(["piano"]), minilm.encode(["piano"]), atol=1e-5)
    many = [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(37)]  # many buckets, many token batches
    np.testing.assert_allclose(piped.encode(many), minilm.encode(many), atol=1e-5)


def test_text_bucket_batches_cover_every_item_under_the_budget(minilm):
    encoder = _with(minilm, pipeline="on")
    indices = np.array([9, 0, 2, 5, 7], dtype=np.int64)
    batches = encoder.tokenize_bucket(TEXTS, indices)
    assert len(batches) > 1
    assert sorted(i for b in batches for i in b.indices) == sorted(indices.tolist())
    assert all(b.tokens <= encoder.token_budget for b in batches)
    assert max(b.inputs["input_ids"].shape[1] for b in batches) <= encoder.max_length
    # the same rows the plain path builds for those texts: same ids, same mask
    plain = {tuple(b.indices): b for b in encoder.tokenize_batches([TEXTS[i] for i in indices])}
    for batch in batches:
        local = tuple(int(np.flatnonzero(indices == i)[0]) for i in batch.indices)
        twin = plain[local]
        torch.testing.assert_close(batch.inputs["input_ids"], twin.inputs["input_ids"])
        torch.testing.assert_close(batch.inputs["attention_mask"], twin.inputs["attention_mask"])


def test_text_pipelined_rejects_bad_items_before_any_work(minilm):
    with pytest.raises(EncoderInputError, match="item 2"):
        _with(minilm, pipeline="on").encode(["ok", "fine", "   "])


def test_text_tokeniser_error_in_the_thread_propagates(minilm):
    calls = []

    class FlakyTokenizer:
        pad_token_id = minilm.tokenizer.pad_token_id

        def __call__(self, texts, **kwargs):
            calls.append(len(texts))
            if len(calls) == 3:
                time.sleep(0.05)
                raise RuntimeError("tokenizer exploded")
            return minilm.tokenizer(texts, **kwargs)

    encoder = TextEncoder(minilm.model, FlakyTokenizer(), "x", device=minilm.device, max_length=64,
                          token_budget=256, pipeline="on", pipeline_bucket=2)
    with pytest.raises(RuntimeError, match="tokenizer exploded"):
        encoder.encode(TEXTS)
    assert len(calls) == 3  # stopped at the failure, not run on
    assert not _prefetch_threads()


def test_text_pipeline_setting_is_checked(minilm):
    with pytest.raises(ValueError, match="pipeline"):
        _with(minilm, pipeline="yes")
    with pytest.raises(ValueError, match="pipeline_bucket"):
        _with(minilm, pipeline_bucket=0)


def test_settings_reach_the_encoders():
    from pydantic import ValidationError

    from encoders.configured import configured_audio_encoder
    from sidcore.config import EncoderSettings

    settings = EncoderSettings(pipeline="on", pipeline_bucket=7, audio_model="logmel")
    assert configured_audio_encoder(settings).pipeline == "on"
    with pytest.raises(ValidationError):
        EncoderSettings(pipeline="always")


# -- audio --
def _waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = [16000 * 25, 16000 * 3, 8000, 16000 * 10, 16000 * 31, 4000]
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def test_logmel_pipelined_matches_plain():
    from encoders import LogMelEncoder

    waves = _waves()
    plain = LogMelEncoder(window_batch=2, pipeline="off").encode(waves)
    piped = LogMelEncoder(window_batch=2, pipeline="on").encode(waves)
    np.testing.assert_array_equal(piped, plain)  # same micro-batches, same order of work
    assert LogMelEncoder(pipeline="on").encode([]).shape == (0, 192)


def test_musicnn_pipelined_matches_plain():
    from encoders.musicnn import MusicnnEncoder

    waves = _waves()
    plain = MusicnnEncoder(window_batch=2, pipeline="off").encode(waves)
    piped = MusicnnEncoder(window_batch=2, pipeline="on").encode(waves)
    np.testing.assert_allclose(piped, plain, atol=1e-6)
    assert not _prefetch_threads()


# -- CUDA (skipped without a GPU) --
@cuda_only
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_text_cuda_pipelined_close_to_cpu(minilm, dtype):
    gpu = load_text_encoder(None, device="cuda", dtype=dtype, max_length=64, token_budget=256)
    assert gpu.pipeline == "auto"  # auto: pipelined on CUDA
    many = [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(300)]
    np.testing.assert_allclose(gpu.encode(many), minilm.encode(many), atol=2e-2)
    assert gpu.encode([]).shape == (0, 384)


@cuda_only
def test_musicnn_cuda_pipelined_close_to_cpu():
    from encoders.musicnn import MusicnnEncoder

    waves = _waves()
    cpu = MusicnnEncoder(window_batch=2).encode(waves)
    encoder = MusicnnEncoder(window_batch=2, device=torch.device("cuda"))
    gpu = encoder.encode(waves)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)
    # windows bound for the GPU are stacked straight into page-locked memory (one host copy)
    batches = encoder.micro_batches(encoder.windows_of(waves)[0])
    assert batches and all(stacked.is_pinned() for _, stacked in batches)
