"""Read topics back with librdkafka (confluent-kafka): a client that is not ours."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient


def read_all(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    idle_s: float = 3.0,
    timeout_s: float = 60.0,
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) on ``topic`` from the start, read until ``expected`` or idle.

    Partitions are assigned directly (no consumer group), and the end is found
    by reading, not by watermarks (the embedded broker's can lag).
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-reader",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout_s
    last_message = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expected is not None and len(out) >= expected:
                # read a little longer: more than expected would be a bug to catch
                if time.monotonic() - last_message > 0.5:
                    break
            elif time.monotonic() - last_message > idle_s:
                break
            for message in consumer.consume(5000, timeout=0.2):
                if message.error():
                    continue
                out.append((message.key(), message.value()))
                last_message = time.monotonic()
    finally:
        consumer.close()
    return out


def topic_names(bootstrap: str) -> set[str]:
    """Topic names the broker lists to librdkafka's AdminClient."""
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)
