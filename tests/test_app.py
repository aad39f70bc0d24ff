"""The Faust app around the service, without a broker: what Faust itself does to it."""

import asyncio

from streams.app import build_app
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
