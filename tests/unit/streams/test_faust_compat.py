"""streams.compat uses private names of Faust and aiokafka; these checks fail when an upgrade
moves or renames one, instead of the behaviour it carries lapsing silently."""

from __future__ import annotations

import contextvars
import inspect

import faust
import pytest
from faust.transport.drivers import aiokafka as driver

from streams import compat

pytestmark = pytest.mark.unit


def test_current_event_is_the_context_variable_faust_reads() -> None:
    from faust import streams as faust_streams

    assert isinstance(faust_streams._current_event, contextvars.ContextVar)
    # Faust's table writes take the partition of the event current_event() returns
    assert "_current_event" in inspect.getsource(faust_streams.current_event)

    class Event:
        pass

    event = Event()
    compat.set_current_event(event)
    assert faust_streams.current_event() is event


def test_passive_consumption_names_exist() -> None:
    assert callable(faust.Stream._enable_passive)
    assert "_processors" in inspect.getsource(faust.Stream.add_processor)
    assert "_enable_passive" in inspect.getsource(faust.Stream.noack_take)


def test_consumer_hooks_exist_and_are_used_by_faust() -> None:
    assert "_create_worker_consumer" in inspect.getsource(driver.AIOKafkaConsumerThread)
    assert "_new_consumer_thread" in inspect.getsource(driver.Consumer)
    assert "_new_transport" in inspect.getsource(faust.App)
    app_cls = compat.app_class(123)
    assert issubclass(app_cls, faust.App)


def test_request_timeout_hooks_exist_and_are_used_by_aiokafka() -> None:
    from aiokafka import client as aioclient
    from aiokafka import conn as aioconn

    assert "_new_producer" in inspect.getsource(driver.Producer)
    assert "self._request_timeout_ms" in inspect.getsource(aioclient.AIOKafkaClient._get_conn)
    assert "group=" in inspect.getsource(aioclient.AIOKafkaClient.send)  # coordination has its own connections
    assert "self._request_timeout" in inspect.getsource(aioconn.AIOKafkaConnection.send)
    assert "_do_version_lookup" in inspect.getsource(aioconn.AIOKafkaConnection.connect)
    from aiokafka.protocol.group import JoinGroupRequest, SyncGroupRequest

    # the requests that keep the long timeout, by their Kafka API keys
    assert {JoinGroupRequest.API_KEY, SyncGroupRequest.API_KEY} == compat.REBALANCE_API_KEYS
    coordinator = inspect.getsource(__import__("aiokafka.consumer.group_coordinator", fromlist=["x"]))
    assert "JoinGroupRequest(" in coordinator and "self._client.send(" in coordinator


def test_a_bound_client_gives_up_on_a_broker_that_accepts_but_never_answers() -> None:
    """What a SIGSTOPped broker looks like to a client: the kernel accepts the TCP connection and
    nothing ever answers. A client bound to 1 s fails its set-up (ApiVersions) in about that long;
    the same client unbound waits its own timeout (here 60 s: cut off at 5 s)."""
    import asyncio
    import socket
    import time

    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaConnectionError

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # accepts (kernel), never reads
        address = f"127.0.0.1:{silent.getsockname()[1]}"

        async def bootstrap(bound: bool) -> float:
            client = AIOKafkaClient(bootstrap_servers=address, request_timeout_ms=60_000)
            if bound:
                compat.bound_data_requests(client, 1.0)
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(client.bootstrap(), 5.0)
            except (KafkaConnectionError, asyncio.TimeoutError):
                pass
            finally:
                await client.close()
            return time.monotonic() - t0

        assert asyncio.run(bootstrap(True)) < 3.0
        assert asyncio.run(bootstrap(False)) >= 4.9
