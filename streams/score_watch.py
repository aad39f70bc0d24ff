"""Read the ``scores`` topic as a consumer service would, and measure what it sees.

:class:`ScoreWatcher` reads every partition of the score topic in a thread
(no consumer group: partitions are assigned directly) with a short fetch
wait, and records for each record the latency from the triggering event's
time to the moment the record became readable here, which users got scores,
and when each item first appeared in anyone's top-K (and whether cold).

Example
-------
>>> with ScoreWatcher("127.0.0.1:9092", "scores") as watcher:    # doctest: +SKIP
...     time.sleep(5)
>>> watcher.latency_ms(50)                                        # doctest: +SKIP
42.0
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition


class ScoreWatcher:
    """Tail a score topic in a background thread and keep statistics about it."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        from_beginning: bool = False,
        user: str | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        client_config: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.user = user
        self.on_record = on_record
        self.records = 0
        self.latencies_ms: list[float] = []
        self.arrivals_ms: list[float] = []
        self.users: set[str] = set()
        self.first_seen: dict[str, tuple[float, bool]] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            bootstrap_timeout_ms=10_000,
            **(client_config or {}),
        )
        partitions = self._consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        if from_beginning:
            self._consumer.seek_to_beginning(*assigned)
        else:
            self._consumer.seek_to_end(*assigned)
            for tp in assigned:  # resolve the position now, not at the first poll
                self._consumer.position(tp)
        self._thread = threading.Thread(target=self._run, name="score-watcher", daemon=True)

    def start(self) -> ScoreWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()

    def __enter__(self) -> ScoreWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            batches = self._consumer.poll(timeout_ms=100, max_records=5000)
            now_ms = time.time() * 1000
            for messages in batches.values():
                for message in messages:
                    self._record(message.value, now_ms)

    def _record(self, value: bytes, now_ms: float) -> None:
        try:
            record = json.loads(value)
            user, event_ts, items = record["user_id"], record["event_ts"], record["items"]
        except (ValueError, KeyError, TypeError) as err:
            self.errors.append(f"unreadable score record: {err}")
            return
        if self.user is not None and user != self.user:
            return
        with self._lock:
            self.records += 1
            self.latencies_ms.append(now_ms - event_ts)
            self.arrivals_ms.append(now_ms)
            self.users.add(user)
            for item in items:
                self.first_seen.setdefault(item["item_id"], (now_ms, bool(item.get("cold"))))
        if self.on_record is not None:
            self.on_record(record)

    def latency_ms(self, percentile: float) -> float:
        """A percentile of event-to-readable latency so far (NaN before any record)."""
        with self._lock:
            values = np.array(self.latencies_ms)
        return float(np.percentile(values, percentile)) if len(values) else float("nan")

    def latency_by_window(self, seconds: float = 10.0) -> list[float]:
        """p99 latency (ms) of the records that arrived in each ``seconds`` window, in order."""
        with self._lock:
            return p99_by_window(self.arrivals_ms, self.latencies_ms, seconds)


def p99_by_window(
    arrivals_ms: Sequence[float], latencies_ms: Sequence[float], seconds: float
) -> list[float]:
    """p99 of the latencies whose records arrived in each ``seconds`` window (empty ones skipped).

    A stall (a checkpoint, a collection, a slow batch) shows as one bad
    window; latency that creeps shows as windows that keep rising.

    >>> p99_by_window([0, 500, 1_000, 2_500], [10, 30, 200, 20], seconds=1.0)
    [29.8, 200.0, 20.0]
    """
    arrived, latency = np.asarray(arrivals_ms, dtype=float), np.asarray(latencies_ms, dtype=float)
    if not len(arrived):
        return []
    window = ((arrived - arrived[0]) // (seconds * 1000)).astype(int)
    return [
        round(float(np.percentile(latency[window == w], 99)), 1)
        for w in range(window[-1] + 1)
        if (window == w).any()
    ]
