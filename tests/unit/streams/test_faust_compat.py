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
