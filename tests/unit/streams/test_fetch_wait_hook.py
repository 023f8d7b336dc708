"""streams.app's cap on the workers' broker long-poll (settings.stream.fetch_wait_ms) sets a
private attribute of aiokafka's consumer after Faust builds it. These checks fail loudly if an
aiokafka upgrade renames it or stops reading it at start, instead of the cap silently lapsing."""

import asyncio
import inspect

import aiokafka
import pytest

pytestmark = pytest.mark.unit


def test_the_attribute_the_hook_sets_is_the_constructor_setting():
    async def build() -> int:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=1234)
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(build()) == 1234
    # read when the consumer starts its fetcher, i.e. after Faust's construction, before fetching
    assert "_fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)

