"""Batch semantics that cannot lose data (docs/architecture.md, "Delivery").

A batch is acknowledged only after `handle` returned, i.e. after every output, kept record and
dead letter of the batch is confirmed by the broker and every sink write is done. `handle`
never raises for one bad item (the processing functions dead-letter items); when it raises,
the whole batch failed: a transient fault (broker or store unavailable, produce timeout) or
a bug. The batch is then retried with bounded exponential backoff, un-acked, while the
worker's metrics show the retrying; after the retry budget it is dead-lettered whole with
the reason (`retries_exhausted`), never dropped silently. If even that cannot be delivered
the loop keeps trying: an un-acked batch is re-read after a restart, a dropped one never is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streams import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    budget_s: float = 120.0  # a fault longer than this dead-letters the batch (and counts as a loss)
    first_delay_s: float = 0.2
    max_delay_s: float = 5.0


Handle = Callable[[Sequence[Any]], Awaitable[None]]
DeadLetterAll = Callable[[Sequence[Any], str], Awaitable[None]]


async def process_batch(
    events: Sequence[Any], worker: str, handle: Handle, dead_letter_all: DeadLetterAll, policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, clock: Callable[[], float] = time.monotonic,
) -> str:
    """Run `handle(events)` to success; returns "ok" or "dead_lettered" (only then may the
    caller ack). Raises only on cancellation (shutdown): the batch stays un-acked."""
    started = clock()
    delay = policy.first_delay_s
    attempt = 0
    while True:
        try:
            await handle(events)
            if attempt:
                log.info("%s: batch of %d succeeded after %d retries", worker, len(events), attempt)
            metrics.RETRYING.labels(worker).set(0)
            return "ok"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below: retried, then dead-lettered whole
            attempt += 1
            reason = f"{type(exc).__name__}: {exc}"
            metrics.RETRIES.labels(worker, type(exc).__name__).inc()
            metrics.RETRYING.labels(worker).set(1)
            if clock() - started + delay > policy.budget_s:
                log.error("%s: batch of %d failed for %.0fs (%d attempts), dead-lettering it whole: %s",
                          worker, len(events), clock() - started, attempt, reason)
                why = f"retries exhausted after {attempt} attempts: {reason}"
                await _until_done(lambda: dead_letter_all(events, why), worker, policy, sleep)  # noqa: B023 - awaited here
                metrics.RETRYING.labels(worker).set(0)
                return "dead_lettered"
            log.warning("%s: batch of %d failed (attempt %d), retrying in %.1fs: %s", worker, len(events), attempt,
                        delay, reason)
            await sleep(delay)
            delay = min(delay * 2, policy.max_delay_s)


async def _until_done(step: Callable[[], Awaitable[None]], worker: str, policy: RetryPolicy,
                      sleep: Callable[[float], Awaitable[None]]) -> None:
    delay = policy.first_delay_s
    while True:
        try:
            await step()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nowhere left to put the batch: keep trying, never ack
            metrics.RETRIES.labels(worker, type(exc).__name__).inc()
            log.error("%s: dead-lettering the batch failed, retrying in %.1fs: %s", worker, delay, exc)
            await sleep(delay)
            delay = min(delay * 2, policy.max_delay_s)
