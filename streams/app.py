"""The Faust app: its topics, its two agents, and the hooks that make restarts exact.

Read it as a list of declarations. The work itself lives in
:class:`streams.service.WorkerService` (plain Python), which the agents call
once per micro-batch.

Two things here are specific to running Faust well:

- **Fetch wait.** faust-streaming hard-codes a 1.5 s consumer fetch wait, and
  a broker that answers multi-partition fetches only when the wait expires
  (the embedded one) then adds up to 1.5 s to every event's path. We lower it
  on the consumer Faust builds (``fetch_wait_ms``, default 10 ms) through
  :mod:`streams.faust_hooks`, the one module that touches Faust's privates.
- **Offsets come from our checkpoints.** Faust's own acks are off for the
  input topics, so Faust never commits: the group's committed offsets are
  only ever those of a checkpoint already on disk (committed after it is
  written), never ahead of one. At the first assignment the worker commits
  its restored checkpoint's offsets for ``events`` (and 0 for the compacted
  ``items``), so Faust's recovery seeks there; if that commit is lost in a
  rebalance, Faust starts from an older checkpoint's offsets and the
  pipeline skips what it has applied. No event is lost to the model and none
  is applied twice.

Example
-------
>>> app = build_app(service=None, bootstrap="127.0.0.1:9092")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
from faust.types import TP

from streams.faust_hooks import commit_offsets, hook_problems, use_fetch_wait, version_drift

if TYPE_CHECKING:
    from streams.service import Outgoing, WorkerService

log = logging.getLogger("recstream.worker")


class FaustHooksMoved(RuntimeError):
    """The installed Faust or aiokafka no longer has a hook point the worker needs."""


def build_app(service: WorkerService, bootstrap: str) -> faust.App:
    """The worker's Faust app, wired to ``service``."""
    settings = service.settings
    problems = hook_problems()
    if problems:
        raise FaustHooksMoved("; ".join(problems))
    for drift in version_drift():
        log.warning("%s", drift)
    use_fetch_wait(settings.fetch_wait_ms)
    datadir = Path(settings.checkpoint_dir) / "faust"  # Faust's own files, not in the cwd
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"recstream-{settings.topic_prefix}worker",
        broker=[f"kafka://{server}" for server in bootstrap.split(",")],
        broker_credentials=service.credentials(),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        datadir=str(datadir),
        topic_allow_declare=False,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_request_timeout=30.0,
        producer_linger=0.002,
        stream_buffer_maxsize=8192,
        loghandlers=[],
    )
    names = settings.topics
    events = app.topic(names.events, key_serializer="raw", value_serializer="raw", acks=False)
    items = app.topic(names.items, key_serializer="raw", value_serializer="raw", acks=False)
    scores = app.topic(names.scores, key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(names.dlq, key_serializer="raw", value_serializer="raw")

    async def publish(outgoing: Outgoing) -> None:
        for key, value in outgoing.dead_letters:
            await dead_letters.send(key=key, value=value)
        for key, value in outgoing.scores:
            await scores.send(key=key, value=value)
        service.published(outgoing)

    @app.agent(items, name="catalog")
    async def catalog(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(1000, within=0.05):
            await publish(service.catalog_batch([e.message for e in batch]))

    @app.agent(events, name="learn")
    async def learn(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(
            settings.batch_size, within=settings.batch_wait_ms / 1000
        ):
            await publish(service.events_batch([e.message for e in batch]))
            if service.checkpoint_due():
                await app.producer.flush()
                service.checkpoint(background=True)
            saved = service.take_saved_offsets()
            if saved:
                await commit_offsets(app, {(names.events, p): o for p, o in saved.items()})

    @app.on_partitions_assigned.connect
    async def start_from_checkpoint(app: faust.App, assigned: set[TP], **_: Any) -> None:
        offsets = service.first_assignment_offsets([(tp.topic, tp.partition) for tp in assigned])
        if offsets:  # Faust's recovery seeks to the committed offsets next
            await commit_offsets(app, offsets)
        service.metrics.assigned_partitions.set(
            sum(1 for tp in assigned if tp.topic == names.events)
        )

    @app.on_before_shutdown.connect
    async def checkpoint_on_shutdown(app: faust.App, **_: Any) -> None:
        await publish(service.outbox())
        service.checkpoint(background=False)

    return app
