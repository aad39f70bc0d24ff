"""The Faust app around the service, without a broker: what Faust itself does to it."""

import asyncio

from streams.app import BatchChannel, build_app
from streams.service import WorkerService
from streams.settings import Settings


def test_a_rebalance_of_fausts_own_group_keeps_the_batches_read_but_not_yet_applied(tmp_path):
    app = build_app(WorkerService(Settings(checkpoint_dir=tmp_path)), "127.0.0.1:1")

    async def rebalance_with_batches_queued() -> dict[str, int]:
        app.flow_control.resume()  # Faust's recovery is over: batches flow
        queues = {name: agent.channel.clone(is_iterator=True) for name, agent in app.agents.items()}
        for channel in queues.values():
            await channel.put(["a batch read from the topic"])
        app.flow_control.suspend()  # Faust's group rebalances ...
        app.flow_control.resume()  # ... and recovers
        return {name: channel.queue.qsize() for name, channel in queues.items()}

    queued = asyncio.run(rebalance_with_batches_queued())
    assert queued == {name: 1 for name in queued} and len(queued) >= 3


def test_a_batch_handed_over_before_fausts_own_group_rebalanced_still_reaches_the_agent(tmp_path):
    """A stream skips a Faust event whose generation is not its app's current one: a read batch
    sent as one just before that group rebalanced was never applied."""
    app = build_app(WorkerService(Settings(checkpoint_dir=tmp_path)), "127.0.0.1:1")

    async def rebalance_between_read_and_apply() -> list:
        app.flow_control.resume()
        channels = [a.channel for a in app.agents.values()]
        channel = next(c for c in channels if isinstance(c, BatchChannel))
        stream = channel.stream()
        await channel.hand(["a batch read from the topic"])
        app.consumer_generation_id += 1  # Faust's own group rebalanced
        return await asyncio.wait_for(anext(aiter(stream)), timeout=5)

    assert asyncio.run(rebalance_between_read_and_apply()) == ["a batch read from the topic"]
