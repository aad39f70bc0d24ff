"""Create the topics of docs/contracts.md on any cluster, idempotently.

Example
-------
>>> from streams.settings import TopicNames
>>> topic_specs(TopicNames("t."), partitions=2)[1]
('t.items', 2, {'cleanup.policy': 'compact'})
"""

from __future__ import annotations

import contextlib
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.settings import TopicNames

COMPACTED = {"cleanup.policy": "compact"}


def topic_specs(names: TopicNames, partitions: int) -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, config) of each topic: items, scores and demand are compacted;
    control, sync and model have one partition (read in the order written) and keep every
    record (sync is the log of model updates a restore replays; model holds snapshots)."""
    return [
        (names.events, partitions, {}),
        (names.items, partitions, dict(COMPACTED)),
        (names.scores, partitions, dict(COMPACTED)),
        (names.dlq, partitions, {}),
        (names.control, 1, {}),
        (names.demand, partitions, dict(COMPACTED)),
        (names.sync, 1, {}),
        (names.model, 1, {}),
    ]


def ensure_topics(
    bootstrap: str,
    names: TopicNames,
    partitions: int = 4,
    replication: int = 1,
    **client_config: Any,
) -> list[str]:
    """Create whichever of the topics are missing; return the names created."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, bootstrap_timeout_ms=10_000, **client_config
    )
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, count, replication, topic_configs=config)
            for name, count, config in topic_specs(names, partitions)
            if name not in existing
        ]
        created = []
        for topic in missing:  # one by one: a concurrent creator only costs us one name
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([topic])
                created.append(topic.name)
        return created
    finally:
        admin.close()
