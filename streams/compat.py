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
- `Producer._new_producer`, aiokafka's `AIOKafkaClient._get_conn` and `AIOKafkaConnection._request_timeout`:
  the data-path request timeout (settings.kafka.request_timeout_s). aiokafka has one request
  timeout per client, which Faust must set above the session timeout for the group's JoinGroup;
  a hung broker then stalls fetches, produces and metadata for that long (90 s).
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


def bound_data_requests(client: Any, timeout_s: float) -> None:
    """Requests on an aiokafka client's data connections (fetch, produce, metadata, list offsets)
    and every connection's set-up (connect, ApiVersions) time out after `timeout_s`; requests on
    its coordination connections (heartbeat, commit, JoinGroup, which may wait a whole rebalance)
    keep the client's own timeout. A timed-out request closes its connection and forces a
    metadata refresh, so the client finds the partition's new leader. The set-up matters as much:
    aiokafka opens connections under one client-wide lock, and a paused broker accepts the TCP
    connection (the kernel does) but never answers ApiVersions, so a reconnect to it with the long
    timeout stalled every new connection of the client."""
    long_s = client._request_timeout_ms / 1000  # noqa: SLF001
    client._request_timeout_ms = int(timeout_s * 1000)  # noqa: SLF001 - read when a connection is made
    get_conn = client._get_conn  # noqa: SLF001

    async def _get_conn(node_id: Any, *, group: ConnectionGroup = ConnectionGroup.DEFAULT, no_hint: bool = False) -> Any:
        conn = await get_conn(node_id, group=group, no_hint=no_hint)
        if conn is not None and group == ConnectionGroup.COORDINATION:
            conn._request_timeout = max(long_s, timeout_s)  # noqa: SLF001 - read by every send on the connection
        return conn

    client._get_conn = _get_conn  # noqa: SLF001


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
