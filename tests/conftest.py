"""Shared fixtures: a real embedded broker (Tansu) for tests of Kafka behaviour."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.settings import Settings, TopicNames
from streams.topics import ensure_topics

DATA = Path(__file__).parent / "data"
RECSTREAM = str(Path(sys.executable).with_name("recstream"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a slow test run first (in their own order): with ``-n``, each worker
    then starts on the long ones, and none is left running one alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker for the whole session; tests isolate themselves by topic prefix."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def topics(broker: EmbeddedBroker) -> TopicNames:
    """The topics under a prefix of this test's own, created on the shared broker."""
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:8]}.")
    ensure_topics(broker.bootstrap, names, partitions=4)
    return names


@pytest.fixture
def settings(broker: EmbeddedBroker, topics: TopicNames) -> Settings:
    return Settings(broker=broker.bootstrap, topic_prefix=topics.prefix)


@pytest.fixture
def cli_env(broker: EmbeddedBroker, topics: TopicNames) -> dict[str, str]:
    """Environment for running the ``recstream`` command against the test broker and topics."""
    return {
        **os.environ,
        "RECSTREAM_BROKER": broker.bootstrap,
        "RECSTREAM_TOPIC_PREFIX": topics.prefix,
    }
