"""One far-future event and one lagging partition: does either move what the worker learns?

Issue 9, item 1: an event stamped up to a day ahead (the contract accepts
it) and a partition that lags the others must not poison the labels. This
check runs the worker's pipeline in-process (no Kafka) over the simulated
shop per seed, in the order a consumer would deliver the stream:

- *clean*: the stream as produced, in event-time order;
- *far_future*: one event stamped ``ahead_ms`` in the future;
- *lagging*: every message of ``lag_partition`` delivered ``lag_ms`` of
  event time late (a partition whose consumer fell behind);
- *both*: the two at once.

Messages are split over ``partitions`` by their key (the user id), as
Kafka's key hashing would, and fed in batches. It reports the worker's own
rolling prequential AUC per task (:class:`~online_models.live_quality.LiveQuality`)
of each run, their means over the seeds, and each variant's difference from
*clean* (on the same seeds, so the noise of the stream is shared).

Example
-------
>>> report = run_check(EventTimeOptions(events=1_500, seeds=(3,), batch=500))
>>> sorted(report["mean_auc"]), sorted(report["mean_difference"]["both"])
(['both', 'clean', 'far_future', 'lagging'], ['cart', 'click', 'purchase'])
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.base import TASKS
from online_models.learner import mtl
from producers.contract import CatalogItem, Event, encode_catalog_item, encode_event
from producers.simulator import Shop, ShopConfig
from streams.pipeline import Pipeline, RawMessage
from streams.settings import Settings


@dataclass(frozen=True)
class EventTimeOptions:
    """The stream, the two faults, and the worker's settings."""

    events: int = 60_000
    seeds: tuple[int, ...] = (7, 8, 9)
    batch: int = 200
    partitions: int = 4
    lag_partition: int = 3
    lag_ms: int = 15 * 60_000
    ahead_ms: int = 23 * 3_600_000
    far_future_at: float = 0.25
    """Where in the stream (a fraction) the far-future event is."""
    settings: Settings = dataclasses.field(default_factory=Settings)


VARIANTS = ("clean", "far_future", "lagging", "both")


def run_check(options: EventTimeOptions) -> dict[str, Any]:
    """AUC per task of the clean stream and of each faulty one, per seed and on average."""
    runs = []
    for seed in options.seeds:
        catalog, events = shop_stream(options.events, seed)
        run: dict[str, Any] = {"seed": seed}
        for variant in VARIANTS:
            far = variant in ("far_future", "both")
            late = variant in ("lagging", "both")
            run[variant] = _auc(catalog, _with_faults(events, options, far, late), options)
        runs.append(run)
    mean = {
        kind: {task: round(float(np.mean([r[kind][task] for r in runs])), 4) for task in TASKS}
        for kind in VARIANTS
    }
    return {
        "events": options.events,
        "seeds": list(options.seeds),
        "lag_partition": options.lag_partition,
        "lag_s": options.lag_ms / 1000,
        "ahead_s": options.ahead_ms / 1000,
        "runs": runs,
        "mean_auc": mean,
        "mean_difference": {
            kind: {task: round(mean[kind][task] - mean["clean"][task], 4) for task in TASKS}
            for kind in VARIANTS[1:]
        },
        "standard_error": {
            kind: {
                task: standard_error([r[kind][task] - r["clean"][task] for r in runs])
                for task in TASKS
            }
            for kind in VARIANTS[1:]
        },
    }


def shop_stream(events: int, seed: int) -> tuple[list[RawMessage], list[Event]]:
    """The simulated shop's catalog (as messages) and its events, in event-time order."""
    shop = Shop(ShopConfig(seed=seed, events=events, drifts=()))
    catalog: list[RawMessage] = []
    stream: list[Event] = []
    for record in shop.records():
        if isinstance(record, CatalogItem):
            value = encode_catalog_item(record)
            catalog.append(RawMessage(0, len(catalog), record.item_id.encode(), value))
        else:
            stream.append(record)
    return catalog, stream[:events]


def partition_of(key: str, partitions: int) -> int:
    """A stable partition per key (Kafka hashes the key the same way for every message).

    >>> partition_of("u1", 4) == partition_of("u1", 4)
    True
    """
    return zlib.crc32(key.encode()) % partitions


def _message(event: Event, partitions: int, offset: int = 0) -> RawMessage:
    return RawMessage(partition_of(event.user_id, partitions), offset, None, encode_event(event))


def _with_faults(
    events: list[Event], options: EventTimeOptions, far: bool, late: bool
) -> list[RawMessage]:
    """The stream as delivered, with one far-future ts (``far``), one partition late (``late``)."""
    events = list(events)
    at = int(len(events) * options.far_future_at)
    if far:
        events[at] = dataclasses.replace(events[at], ts=events[at].ts + options.ahead_ms)
    lag = options.lag_ms if late else 0
    arrival = []
    for n, event in enumerate(events):
        partition = partition_of(event.user_id, options.partitions)
        delay = lag if partition == options.lag_partition else 0
        sent = events[n - 1].ts if n == at else event.ts  # the bad one arrives in its place
        arrival.append((sent + delay, n))
    arrival.sort()
    return [_message(events[n], options.partitions) for _, n in arrival]


def _auc(catalog: list[RawMessage], stream: list[RawMessage], options: EventTimeOptions) -> dict:
    settings = options.settings
    pipeline = Pipeline(mtl(settings.model_config()), labels=settings.label_config())
    pipeline.process_catalog(catalog, "items")
    offsets: dict[int, int] = {}
    numbered = []
    for message in stream:  # offsets per partition in delivery order, as a topic has them
        offset = offsets.get(message.partition, 0)
        offsets[message.partition] = offset + 1
        numbered.append(dataclasses.replace(message, offset=offset))
    for start in range(0, len(numbered), options.batch):
        pipeline.process_events(numbered[start : start + options.batch])
    summary = pipeline.quality.summary()
    return {task: round(float(summary[task]["auc"]), 4) for task in TASKS}


def standard_error(differences: list[float]) -> float | None:
    """The standard error of the mean of per-seed differences (None for one seed).

    >>> standard_error([0.01, -0.01, 0.03]), standard_error([0.5])
    (0.0115, None)
    """
    if len(differences) < 2:
        return None
    return round(float(np.std(differences, ddof=1) / np.sqrt(len(differences))), 4)
