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
- `Producer._new_producer`, aiokafka's `AIOKafkaClient._request_timeout_ms`, `_get_conn`, `send`
  and `AIOKafkaConnection._request_timeout`: the request timeout (settings.kafka.request_timeout_s).
  aiokafka has one request timeout per client, which Faust must set above the session timeout for
  the group's JoinGroup; a hung broker then stalled fetches, produces, metadata and commits for that
  long (90 s).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
from aiokafka.client import ConnectionGroup
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


# The requests a broker answers only when a rebalance completes (JoinGroup, SyncGroup: up to the
# rebalance timeout); they keep the client's long timeout, every other request gets the short one.
REBALANCE_API_KEYS = frozenset({11, 14})


def bound_data_requests(client: Any, timeout_s: float) -> None:
    """Every request of an aiokafka client, and the set-up of every connection (connect,
    ApiVersions), times out after `timeout_s`, but JoinGroup and SyncGroup, which keep the
    client's own timeout. A timed-out request closes its connection and forces a metadata refresh
    (data) or a coordinator lookup (heartbeat, commit), so the client follows the new leader or
    coordinator instead of waiting for a hung broker. The set-up matters as much: aiokafka opens
    connections under one client-wide lock, and a paused broker accepts the TCP connection (the
    kernel does) but never answers ApiVersions, so one reconnect with the long timeout stalled
    every new connection of the client; and a commit waiting on a paused coordinator held up the
    consumer thread's other calls."""
    long_s = max(client._request_timeout_ms / 1000, timeout_s)  # noqa: SLF001
    client._request_timeout_ms = int(timeout_s * 1000)  # noqa: SLF001 - read when a connection is made
    get_conn, send = client._get_conn, client.send  # noqa: SLF001

    async def _send(node_id: Any, request: Any, *, group: ConnectionGroup = ConnectionGroup.DEFAULT) -> Any:
        if getattr(request, "API_KEY", None) not in REBALANCE_API_KEYS:
            return await send(node_id, request, group=group)
        conn = await get_conn(node_id, group=group)
        if conn is None:
            return await send(node_id, request, group=group)  # raises NodeNotReadyError as aiokafka does
        conn._request_timeout = long_s  # noqa: SLF001 - captured when the request is sent
        try:
            return await send(node_id, request, group=group)
        finally:
            conn._request_timeout = timeout_s  # noqa: SLF001

    client.send = _send


def app_class(fetch_wait_ms: int, request_timeout_s: float = 90.0) -> type[faust.App]:
    """faust.App whose consumer long-polls the broker for at most `fetch_wait_ms`, and whose
    consumer and producer give up a data-path request after `request_timeout_s`."""

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_wait_ms  # noqa: SLF001 - read when the consumer starts its fetcher
            bound_data_requests(consumer._client, request_timeout_s)  # noqa: SLF001
            return consumer

    class FastConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class BoundProducer(driver.Producer):
        def _new_producer(self, transactional_id: str | None = None) -> Any:
            producer = super()._new_producer(transactional_id)
            bound_data_requests(producer.client, request_timeout_s)
            return producer

    class Transport(driver.Transport):
        Consumer = FastConsumer
        Producer = BoundProducer

    class App(faust.App):
        def _new_transport(self) -> Any:
            return Transport(self.conf.broker_consumer, self)

    return App
