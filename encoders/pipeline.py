"""Overlapping host-side preparation (tokenisation, window stacking) with device work.

`prefetch` runs a preparation function over work items in one background thread, a bounded
number of items ahead of the caller, so that while the accelerator runs batch i the host already
prepares batch i+1. HF fast tokenizers and numpy/torch copies release the GIL, so the thread
really runs alongside the caller's kernel launches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")
U = TypeVar("U")

PIPELINE_MODES = ("auto", "on", "off")
_DONE = object()


def use_pipeline(mode: str, device: torch.device) -> bool:
    """'auto': pipelined on an accelerator, plain on the CPU (where the cores are the forward
    pass's and a second thread only competes); 'on'/'off' force it (tests force it on the CPU)."""
    if mode not in PIPELINE_MODES:
        raise ValueError(f"pipeline must be one of {PIPELINE_MODES}, got {mode!r}")
    return mode == "on" or (mode == "auto" and device.type != "cpu")


def pinned(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` in page-locked memory when it is bound for CUDA (so that the copy can be
    non-blocking), else unchanged."""
    return tensor.pin_memory() if device.type == "cuda" else tensor


def prefetch(prepare: Callable[[T], U], items: Iterable[T], depth: int = 2) -> Iterator[U]:
    """Yield prepare(item) for each item, in order, computed up to `depth` items ahead in a
    background thread. An exception raised by prepare (or by iterating `items`) is raised here at
    that item's turn; leaving the loop early (break, an exception in the caller) stops the thread."""
    results: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple[object, object]) -> bool:
        while not stop.is_set():
            try:
                results.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if stop.is_set() or not put((prepare(item), None)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
            put((None, exc))
            return
        put((_DONE, None))

    thread = threading.Thread(target=work, name="encoder-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value, error = results.get()
            if error is not None:
                raise error
            if value is _DONE:
                return
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
