"""A worker process's threads: native BLAS/OpenMP pools limited (sidcore.threads), small encoder
batches cut into parts encoded at once on one torch thread each (sidstream.commands.worker),
the text encoder warmed up on a trickle's shapes (streams.app), and the harness's share of cores
per encoder process."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the wrapper sets them per batch; later tests keep theirs


@pytest.fixture
def restore_pools():
    from threadpoolctl import ThreadpoolController

    libs = ThreadpoolController().lib_controllers
    before = [(lib, lib.num_threads) for lib in libs]
    yield
    for lib, n in before:
        lib.set_num_threads(n)


def test_limit_native_threads_sets_blas_and_faiss_openmp_but_not_torch(restore_pools):
    import faiss  # noqa: F401 - loads its OpenBLAS and OpenMP copies
    import torch
    from threadpoolctl import ThreadpoolController

    from sidcore.config import Settings
    from sidcore.threads import limit_native_threads

    assert Settings().stream.blas_threads == 1  # what `sidstream worker run` passes
    torch_threads = torch.get_num_threads()
    changed = limit_native_threads(1)
    assert {p.user_api for p in changed} >= {"blas"}
    assert all(p.after == 1 for p in changed)
    for lib in ThreadpoolController().lib_controllers:
        if "/torch/" in str(lib.filepath):
            continue
        if lib.user_api in ("blas", "openmp"):
            assert lib.num_threads == 1, lib.filepath
    assert torch.get_num_threads() == torch_threads
    with pytest.raises(ValueError, match=">= 1"):
        limit_native_threads(0)


class _Recorder:
    """An encoder that records each call's batch, thread and torch thread count."""

    model_id, dim = "recorder", 2

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str, int]] = []
        self.lock = threading.Lock()

    def encode(self, batch):
        import torch

        with self.lock:
            self.calls.append((list(batch), threading.current_thread().name, torch.get_num_threads()))
        return np.array([[float(t.split("-")[1]), 1.0] for t in batch], dtype=np.float32)


def test_small_batches_are_split_into_parts_on_one_torch_thread_each():
    from encoders.parts import ThreadsBySize

    inner = _Recorder()
    enc = ThreadsBySize(inner, few=2, busy_batch=16)
    batch = [f"t-{i}" for i in range(5)]
    out = enc.encode(batch)
    np.testing.assert_array_equal(out[:, 0], np.arange(5))  # parts joined in order
    parts = sorted(inner.calls)
    assert [p[0] for p in parts] == [["t-0", "t-1"], ["t-2", "t-3", "t-4"]]
    assert all(name.startswith("encode-part") and threads == 1 for _, name, threads in parts)


def test_one_item_is_not_split_and_backlogs_are_cut_one_part_per_core():
    from encoders.parts import MIN_PART, ThreadsBySize

    inner = _Recorder()
    enc = ThreadsBySize(inner, few=2, busy_batch=4, cores=3)
    enc.encode(["t-0"])
    assert inner.calls == [(["t-0"], inner.calls[0][1], 1)]
    inner.calls.clear()
    small_backlog = [f"t-{i}" for i in range(MIN_PART + 1)]  # too few items for two parts of MIN_PART
    np.testing.assert_array_equal(enc.encode(small_backlog)[:, 0], np.arange(MIN_PART + 1))
    assert [(len(b), n) for b, _, n in inner.calls] == [(MIN_PART + 1, 1)]
    inner.calls.clear()
    backlog = [f"t-{i}" for i in range(64)]
    out = enc.encode(backlog)
    np.testing.assert_array_equal(out[:, 0], np.arange(64))  # parts joined in order
    parts = sorted(inner.calls, key=lambda c: int(c[0][0].split("-")[1]))
    assert [len(b) for b, _, _ in parts] == [21, 21, 22]  # one part per core
    assert all(name.startswith("encode-part") and threads == 1 for _, name, threads in parts)
    assert [enc.parts(n) for n in (1, 2, 3, 4, 15, 16, 24, 1000)] == [1, 2, 2, 1, 1, 2, 3, 3]


def test_encoders_off_the_cpu_and_unset_threads_are_passed_through():
    import torch

    from encoders.parts import ThreadsBySize, threads_by_size

    inner = _Recorder()
    assert isinstance(threads_by_size(inner, 2, 16), ThreadsBySize)  # no device attribute: a CPU encoder
    assert threads_by_size(inner, None, 16) is inner
    inner.device = torch.device("cuda")
    assert threads_by_size(inner, 2, 16) is inner


def test_few_one_keeps_one_torch_thread_for_small_batches():
    from encoders.parts import ThreadsBySize

    inner = _Recorder()
    ThreadsBySize(inner, few=1, busy_batch=16).encode(["t-0", "t-1", "t-2"])
    assert [(len(b), n) for b, _, n in inner.calls] == [(3, 1)]


def test_split_parts_give_the_rows_of_one_whole_batch_minilm():
    """The shipped MiniLM: a batch encoded as parts on two threads equals the batch encoded whole."""
    from encoders import load_text_encoder
    from encoders.parts import ThreadsBySize

    minilm = load_text_encoder(None, device="cpu", dtype="float32")
    texts = ["Nebula by Max McCracken. Tags: ambient, electronic.", "rock", "Moi dix Mois. Tags: j-rock, visual kei",
             "a much longer sentence " * 12, "Ünïcödé ♪ 音楽"]
    whole = minilm.encode(texts)
    parts = ThreadsBySize(minilm, few=2, busy_batch=16).encode(texts)
    np.testing.assert_allclose(parts, whole, atol=1e-6)


def test_warm_text_encoder_covers_a_trickles_batch_sizes():
    from streams.roles.text import warm_text_encoder

    inner = _Warm()
    done = warm_text_encoder(inner, sizes=(1, 2, 5), words=(2, 30))
    assert sorted(inner.sizes) == [1, 1, 2, 2, 5, 5] and done == 16
    assert len(set(inner.lengths)) == 2  # two token widths


class _Warm:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.lengths: list[int] = []

    def encode(self, batch):
        self.sizes.append(len(batch))
        self.lengths.append(len(batch[0]))
        return np.zeros((len(batch), 2), dtype=np.float32)


@pytest.mark.parametrize(("groups", "encoding"), [
    ((("text",), ("assigner", "writer")), 1),
    ((("text", "audio"), ("assigner", "writer")), 1),
    ((("text",), ("audio",), ("assigner",), ("writer",)), 2),
])
def test_harness_splits_cores_among_encoder_processes_only(tmp_path, groups, encoding):
    import os

    from sidcore.config import Settings
    from sidstream.harness import PipelineRun

    run = PipelineRun(Settings(), tmp_path)
    run.groups = groups
    assert run.worker_settings.encoders.threads == max(1, (os.cpu_count() or 2) // encoding)
    pinned = PipelineRun(Settings().model_copy(update={"encoders": Settings().encoders.model_copy(update={"threads": 3})}),
                         tmp_path)
    assert pinned.worker_settings.encoders.threads == 3


def test_audio_parts_share_the_window_batch():
    """Parts run at once: each part's window micro-batches shrink by the number of parts, so
    the peak activation memory stays one micro-batch's; unsplit encoders keep theirs."""
    from encoders import load_audio_encoder
    from encoders.parts import ThreadsBySize, share_window_batch

    audio = load_audio_encoder("logmel", window_batch=16)
    wrapped = share_window_batch(audio, ThreadsBySize(audio, few=2, busy_batch=16, cores=4))
    assert wrapped.workers == 4 and audio.window_batch == 4
    alone = load_audio_encoder("logmel", window_batch=16)
    assert share_window_batch(alone, alone) is alone and alone.window_batch == 16
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (25, 3, 40, 12)]
    np.testing.assert_allclose(wrapped.encode(waves), alone.encode(waves), atol=1e-5)
