"""The parts of a fault run: a stream with bad input mixed in, a paced feeder, a topic
reader, and a real ``recstream worker`` process to kill and restart.

Nothing here is simulated: the feeder is a Kafka producer (``acks=all``), the
reader a Kafka consumer reading a topic back from its start, and
:class:`WorkerProcess` runs the ``recstream worker`` command as a child
process with the applied-offsets ledger on (``RECSTREAM_LEDGER=1``).

Example
-------
>>> records = list(fault_records(200, seed=3, malformed_every=20, duplicate_every=50))
>>> sorted({r.kind.split(":")[0] for r in records})
['catalog', 'duplicate', 'event', 'malformed']
>>> with EmbeddedBroker() as broker:                                   # doctest: +SKIP
...     feeder = Feeder(broker.bootstrap, TopicNames("x."), records, rate=100).start()
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from producers.contract import CatalogItem, encode_catalog_item, encode_event
from producers.simulator import Shop, ShopConfig
from streams.bench.fault_audit import TopicMessage
from streams.broker import free_port
from streams.checkpoint import CheckpointStore
from streams.demo import scrape
from streams.ledger import ApplyLedger
from streams.settings import TopicNames

NOW_MS = 1_700_000_000_000
"""The ``ts`` of malformed events that carry one (2023: valid whenever read)."""


def _event_json(**changes: Any) -> bytes:
    base = {"event_id": "x", "ts": NOW_MS, "type": "click", "user_id": "u1", "item_id": "i1"}
    return json.dumps({**base, **changes}).encode()


MALFORMED: dict[str, Callable[[int], bytes]] = {
    "not_json": lambda n: b"{this is not json %d" % n,
    "not_utf8": lambda n: bytes([0xFF, 0xFE, 0x00, 0x81]) * 8 + str(n).encode(),
    "empty": lambda n: b"",
    "missing_field": lambda n: json.dumps(
        {"event_id": f"m{n}", "ts": NOW_MS, "type": "click", "item_id": "i1"}
    ).encode(),
    "unknown_type": lambda n: _event_json(event_id=f"t{n}", type="teleport"),
    "bad_price": lambda n: _event_json(event_id=f"p{n}", item={"price": -5.0}),
    "bad_timestamp": lambda n: _event_json(event_id=f"y{n}", ts=32_503_680_000_000),
    "wrong_type": lambda n: _event_json(event_id=f"w{n}", user_id=12345),
    "unknown_schema": lambda n: _event_json(event_id=f"s{n}", schema=99),
}
"""Malformed ``events`` values by the reason the worker must give (numbered: all distinct)."""


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message to produce: ``kind`` is event, catalog, duplicate or malformed:<reason>."""

    kind: str
    key: bytes
    value: bytes


def fault_records(
    events: int, seed: int, malformed_every: int = 50, duplicate_every: int = 97
) -> Iterator[Outbound]:
    """The simulated shop's stream with malformed events and immediate repeats mixed in.

    Every ``malformed_every``-th event is followed by a malformed one (the
    reasons in turn), every ``duplicate_every``-th by a second copy of itself
    (same key, so the next offset of the same partition).
    """
    shop = Shop(
        ShopConfig(seed=seed, events=events, users=500, initial_items=300, new_items=50, drifts=())
    )
    reasons = itertools.cycle(MALFORMED)
    n = 0
    for record in shop.records():
        if isinstance(record, CatalogItem):
            yield Outbound("catalog", record.item_id.encode(), encode_catalog_item(record))
            continue
        n += 1
        key, value = record.user_id.encode(), encode_event(record)
        yield Outbound("event", key, value)
        if n % duplicate_every == 0:
            yield Outbound("duplicate", key, value)
        if n % malformed_every == 0:
            reason = next(reasons)
            yield Outbound(f"malformed:{reason}", key, MALFORMED[reason](n))


class Feeder:
    """Produces records at ``rate`` per second from a thread; can stop early.

    Remembers every acknowledged message as (partition, offset, value), and
    the end of each partition acknowledged so far.
    """

    def __init__(
        self, bootstrap: str, topics: TopicNames, records: Iterable[Outbound], rate: float
    ) -> None:
        self.topics = topics
        self.records = records
        self.rate = rate
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            retries=10,
            linger_ms=5,
            max_in_flight_requests_per_connection=1,  # order kept through retries
            max_request_size=2_000_000,
        )
        self.acked: list[TopicMessage] = []
        self.failed = 0
        self.ends: dict[int, int] = {}
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop producing (what was sent is flushed)."""
        self._stop.set()
        self.wait()

    def wait(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def end(self, partition: int) -> int:
        """The next offset of ``partition`` after every message acknowledged so far."""
        with self._lock:
            return self.ends.get(partition, 0)

    def _run(self) -> None:
        started = time.monotonic()
        events = 0
        try:
            for record in self.records:
                if self._stop.is_set():
                    break
                topic = self.topics.items if record.kind == "catalog" else self.topics.events
                future = self.producer.send(topic, key=record.key, value=record.value)
                if topic == self.topics.events:
                    future.add_callback(self._acked, record.value)
                    future.add_errback(self._failed)
                    events += 1
                    self.sent = events
                    ahead = events / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        finally:
            self.producer.flush(timeout=60)
            self.producer.close(timeout=10)

    def _acked(self, value: bytes, metadata: Any) -> None:
        with self._lock:
            self.acked.append(TopicMessage(metadata.partition, metadata.offset, value))
            self.ends[metadata.partition] = max(
                self.ends.get(metadata.partition, 0), metadata.offset + 1
            )

    def _failed(self, _err: Exception) -> None:
        with self._lock:
            self.failed += 1


def read_topic(
    bootstrap: str, topic: str, expected: int = 0, idle_s: float = 2.0, timeout_s: float = 120.0
) -> list[TopicMessage]:
    """Every message of ``topic`` from its start: read until ``expected`` and then idle.

    The end is found by reading, not by watermarks (the embedded broker's
    can lag what is readable).
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        partitions = None
        deadline = time.monotonic() + timeout_s
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.2)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        out: list[TopicMessage] = []
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200, max_records=5000)
            for records in batch.values():
                out.extend(TopicMessage(r.partition, r.offset, r.value) for r in records)
                last = time.monotonic()
            if len(out) >= expected and time.monotonic() - last > idle_s:
                break
        return out
    finally:
        consumer.close()


class WorkerProcess:
    """``recstream worker`` as a child process, with its metrics port, checkpoints and log.

    ``ledger``: keep the applied-offsets ledger (``RECSTREAM_LEDGER=1``), as
    the fault runs audit it; it grows with the stream.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: TopicNames,
        checkpoint_dir: Path,
        *flags: str,
        faults: str = "",
        ledger: bool = True,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.checkpoint_dir = checkpoint_dir
        self.flags = flags
        self.faults = faults
        self.ledger = ledger
        self.port = free_port()
        self.log = checkpoint_dir.parent / f"worker-{checkpoint_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, faults: str | None = None, timeout_s: float = 300.0) -> WorkerProcess:
        """Start it (with ``faults``, if given) and wait until it owns its partitions."""
        self.launch(faults)
        self.wait_for(lambda m: m.get("recstream_assigned_partitions", 0) > 0, timeout_s, "start")
        return self

    def launch(self, faults: str | None = None) -> WorkerProcess:
        """Start it (with ``faults``, if given) without waiting for it to join the group."""
        if faults is not None:
            self.faults = faults
        self.port = free_port()
        env = {
            **os.environ,
            "RECSTREAM_BROKER": self.bootstrap,
            "RECSTREAM_TOPIC_PREFIX": self.topics.prefix,
            "RECSTREAM_LEDGER": "1" if self.ledger else "",
            "RECSTREAM_FAULTS": self.faults,
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-c", "from streams.cli import main; raise SystemExit(main())"]
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"\n--- start (faults {self.faults!r}) at {time.time():.3f}\n".encode())
            self.process = subprocess.Popen(
                [
                    *command,
                    "worker",
                    "--metrics-port",
                    str(self.port),
                    "--checkpoint-dir",
                    str(self.checkpoint_dir),
                    *self.flags,
                ],
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        return self

    def metrics(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.port}/metrics")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for(
        self, condition: Callable[[dict[str, float]], bool], timeout_s: float, what: str
    ) -> dict[str, float]:
        """Poll the metrics until ``condition``; raise (with the log's tail) on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker exited waiting for {what}: {self.tail()}")
            metrics = self.metrics()
            if metrics and condition(metrics):
                return metrics
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}: {self.tail()}")

    def kill(self) -> int:
        """SIGKILL, and wait for the exit."""
        return self.signal(signal.SIGKILL)

    def signal(self, sig: int, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Kill it if it still runs (a clean-up: safe to call twice)."""
        if self.alive():
            self.kill()

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def final_ledger(self) -> tuple[ApplyLedger, dict[int, int], str]:
        """The ledger and offsets of the newest usable checkpoint, and its file name."""
        store = CheckpointStore(self.checkpoint_dir, owner=self.topics.events)
        found, _refused = store.load_latest()
        if found is None or "ledger" not in found.state:
            raise RuntimeError(f"no checkpoint with a ledger in {self.checkpoint_dir}")
        return ApplyLedger.from_state(found.state["ledger"]), found.offsets, found.path.name


def applied_count(metrics: dict[str, float]) -> float:
    """Events applied plus events rejected, as the worker's counters show them."""
    return sum(
        v
        for k, v in metrics.items()
        if k.startswith("recstream_events_total{")
        or k.startswith("recstream_invalid_events_total{")
    )


def settle(
    worker: WorkerProcess, at_least: int = 0, quiet_s: float = 2.0, give_up_s: float = 20.0
) -> dict[str, float]:
    """Wait until the worker has no lag and its counters stand still.

    Returns once it has seen ``at_least`` messages and stood still for
    ``quiet_s``, or has stood still for ``give_up_s`` short of them (then
    something is missing, and the audit will say what).
    """
    last, since = -1.0, time.monotonic()
    while True:
        metrics = worker.wait_for(lambda m: True, 60, "metrics")
        count = applied_count(metrics)
        lag = sum(v for k, v in metrics.items() if k.startswith("recstream_consumer_lag{"))
        if count != last or lag:
            last, since = count, time.monotonic()
        still = time.monotonic() - since
        if (count >= at_least and still >= quiet_s) or still >= give_up_s:
            return metrics
        time.sleep(0.2)
