"""The one private hook of Faust this project uses, fenced in and checked against pinned versions.

The worker itself uses none: it reads with plain aiokafka consumers
(:mod:`streams.reader`). Only ``recstream bench throughput --kafka`` runs
Faust's own consumer, as the pass-through the worker is compared with, and
that comparison is fair only at the worker's fetch wait. Faust builds its
worker consumer with a hard-coded ``fetch_max_wait_ms=1500``
(``AIOKafkaConsumerThread._create_worker_consumer``), and a broker that answers
a multi-partition fetch only when the wait expires (the embedded one) then
adds up to 1.5 s to every fetch. :func:`use_fetch_wait` wraps that factory
and sets aiokafka's ``_fetch_max_wait_ms`` on the consumer it returns (read
by ``AIOKafkaConsumer.start``).

The versions these hook points were read in are pinned in ``pyproject.toml``
(:data:`CHECKED_VERSIONS`). :func:`hook_problems` names every hook point that
moved and :func:`version_drift` other installed versions;
``tests/test_faust_hooks.py`` requires both lists empty.

Example
-------
>>> hook_problems(), version_drift()
([], [])
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

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
    return problems


def use_fetch_wait(milliseconds: int) -> None:
    """Make every worker consumer Faust builds from now on wait at most ``milliseconds``."""
    _fetch_wait_ms["value"] = int(milliseconds)
    setattr(_ConsumerThread, _FACTORY, _create_worker_consumer)


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _ORIGINAL_FACTORY(self, transport)
    setattr(consumer, _FETCH_WAIT_ATTRIBUTE, _fetch_wait_ms["value"])
    return consumer
