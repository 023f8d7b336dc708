"""Every private name of Faust and aiokafka that sidstream uses, in one place.

Each is used because Faust has no public way to do the thing; tests/unit/streams/test_faust_compat.py
fails when an upgrade moves or renames one, instead of the behaviour lapsing silently.

- `faust.streams._current_event`: the context variable Faust reads to pick the changelog
  partition of a table write (the logger writes a batch's rows with each row's own event current).
- `Stream._enable_passive`, `Stream._processors`: how `noack_take` consumes a stream passively
  (streams.take.adaptive_take follows it).
- `AIOKafkaConsumerThread._create_worker_consumer`, `Consumer._new_consumer_thread`,
  `App._new_transport`, and aiokafka's `AIOKafkaConsumer._fetch_max_wait_ms`: the broker long-poll
  cap (settings.stream.fetch_wait_ms; Faust builds its consumer with 1.5 s and no setting).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as driver


def set_current_event(event: Any) -> None:
    """Make `event` Faust's current event (table writes go to its partition's changelog)."""
    _current_event.set(weakref.ref(event))


def enable_passive(stream: Any, channel: AsyncIterator[Any]) -> None:
    """Consume `stream` passively from `channel`: its processors run on every event."""
    stream._enable_passive(channel)  # noqa: SLF001


def remove_processor(stream: Any, processor: Callable[..., Any]) -> None:
    stream._processors.remove(processor)  # noqa: SLF001


def app_class(fetch_wait_ms: int) -> type[faust.App]:
    """faust.App whose consumer long-polls the broker for at most `fetch_wait_ms`."""

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_wait_ms  # noqa: SLF001 - read when the consumer starts its fetcher
            return consumer

    class FastConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        Consumer = FastConsumer

    class App(faust.App):
        def _new_transport(self) -> Any:
            return Transport(self.conf.broker_consumer, self)

    return App
