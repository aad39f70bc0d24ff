"""Every private hook of Faust and aiokafka the worker relies on, in one place.

faust-streaming offers no setting for two things the worker needs, so this
module reaches into private code, and nothing else in the project does:

- **The consumer's fetch wait.** Faust builds its worker consumer with a
  hard-coded ``fetch_max_wait_ms=1500``
  (``AIOKafkaConsumerThread._create_worker_consumer``). A broker that answers
  a multi-partition fetch only when the wait expires (the embedded one) then
  adds up to 1.5 s to every event's path. :func:`use_fetch_wait` wraps that
  factory and sets aiokafka's ``_fetch_max_wait_ms`` on the consumer it
  returns (read by ``AIOKafkaConsumer.start``).
- **Committing offsets of our choosing.** Faust's public ``commit`` commits
  what its acks reached; the worker commits the offsets of a checkpoint on
  disk instead, through the consumer's ``_commit(offsets)``
  (:func:`commit_offsets`).

The versions these hook points were read in are pinned in ``pyproject.toml``
(:data:`CHECKED_VERSIONS`). :func:`hook_problems` names every hook point that
moved, and the worker refuses to start when there is one; :func:`version_drift`
names other installed versions, which the worker logs as a warning.
``tests/test_faust_hooks.py`` requires both lists empty.

Example
-------
>>> hook_problems(), version_drift()
([], [])
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

CHECKED_VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

_ConsumerThread = faust_aiokafka.AIOKafkaConsumerThread
_FACTORY = "_create_worker_consumer"
_FETCH_WAIT_ATTRIBUTE = "_fetch_max_wait_ms"
_ORIGINAL_FACTORY = getattr(_ConsumerThread, _FACTORY, None)
_fetch_wait_ms = {"value": 1500}


def version_drift() -> list[str]:
    """Installed versions that differ from those the hooks were checked against."""
    return [
        f"{package} {version(package)} is installed; the hooks were checked against {checked}"
        for package, checked in CHECKED_VERSIONS.items()
        if version(package) != checked
    ]


def hook_problems() -> list[str]:
    """Hook points that moved or vanished in the installed versions (empty when none did)."""
    problems = []
    if _ORIGINAL_FACTORY is None:
        problems.append(f"faust: AIOKafkaConsumerThread.{_FACTORY} is gone")
    elif "fetch_max_wait_ms" not in inspect.getsource(_ORIGINAL_FACTORY):
        problems.append(f"faust: {_FACTORY} no longer passes fetch_max_wait_ms")
    if f"self.{_FETCH_WAIT_ATTRIBUTE}" not in inspect.getsource(aiokafka.AIOKafkaConsumer.start):
        problems.append(f"aiokafka: AIOKafkaConsumer.start no longer reads {_FETCH_WAIT_ATTRIBUTE}")
    commit = getattr(faust_aiokafka.Consumer, "_commit", None)
    if commit is None or list(inspect.signature(commit).parameters) != ["self", "offsets"]:
        problems.append("faust: Consumer._commit(offsets) is gone or takes other arguments")
    return problems


def use_fetch_wait(milliseconds: int) -> None:
    """Make every worker consumer Faust builds from now on wait at most ``milliseconds``."""
    _fetch_wait_ms["value"] = int(milliseconds)
    setattr(_ConsumerThread, _FACTORY, _create_worker_consumer)


async def commit_offsets(app: faust.App, offsets: Mapping[tuple[str, int], int]) -> bool:
    """Commit ``{(topic, partition): next offset}`` for the app's consumer group."""
    return await app.consumer._commit({TP(t, p): o for (t, p), o in offsets.items()})


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _ORIGINAL_FACTORY(self, transport)
    setattr(consumer, _FETCH_WAIT_ATTRIBUTE, _fetch_wait_ms["value"])
    return consumer
