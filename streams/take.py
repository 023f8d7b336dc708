"""Adaptive batches from a Faust stream, never acked here (the agents ack after the batch is durable).

Faust's ``noack_take(max_, within)`` yields when the buffer holds ``max_`` events or ``within``
seconds have passed, so a lone event on an idle stream waits the whole ``within`` (200 ms by
default) at every hop. ``adaptive_take`` yields as soon as no further event arrived for
``linger`` seconds after the last one, or the buffer is full, or ``within`` has passed since the
batch's first event: idle streams pay ``linger`` (a few ms) per hop, busy streams still get full
batches because events keep arriving faster than ``linger``.

It follows ``faust.Stream.noack_take`` (faust-streaming 0.11), with the wait changed: the
stream is consumed passively by a processor that appends each event to the buffer; the
consumer of this generator gets lists of events and acks them itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from streams import compat


async def adaptive_take(stream: Any, max_: int, within: float, linger: float) -> AsyncIterator[list[Any]]:
    buffer: list[Any] = []
    added = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    enable_acks = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming
        if consuming is not None:
            try:
                await consuming  # the batch being yielded is read whole before new events join
            finally:
                consuming = None
        event = stream.current_event
        if event is None:
            raise RuntimeError("take buffer found current_event is None")
        buffer.append(event)
        added.set()
        if len(buffer) >= max_:
            consumed.clear()
            await stream.wait(consumed)  # never more than max_ events in one batch
        return value

    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    compat.enable_passive(stream, aiter(stream.channel))  # as noack_take does
    try:
        while not stream.should_stop:
            if not buffer:
                added.clear()
                await stream.wait_for_stopped(added, timeout=within)
                if not buffer:
                    continue
            first = time.monotonic()
            while len(buffer) < max_ and not stream.should_stop:
                left = within - (time.monotonic() - first)
                if left <= 0:
                    break
                added.clear()
                await stream.wait_for_stopped(added, timeout=min(linger, left))
                if not added.is_set():
                    break  # nothing new for `linger`: go with what is there
            consuming = asyncio.get_running_loop().create_future()
            try:
                yield list(buffer)
            finally:
                buffer.clear()
                if not consuming.done():
                    consuming.set_result(None)
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        compat.remove_processor(stream, add_to_buffer)
