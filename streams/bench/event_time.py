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
Kafka's key hashing would, and fed in batches. Each run records the
prediction the worker made for every sample when it appeared (a sample is
its user, item and time); the labels are the clean run's, every window
closed at the end. Per seed and task, a variant's AUC and the clean run's
are taken on the same samples, those that appeared in the second half of the
clean stream, and their difference has a paired (DeLong) standard error: the
two runs score the same samples with nearly the same model, so the
difference is measured far more precisely than either AUC (purchase AUC
rests on a few hundred positives per seed). The report gives the mean AUC
per variant, the mean difference from *clean* over the seeds and its
standard error.

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
from online_models.evaluation import auc, paired_auc_difference
from online_models.labels import TrackedSample
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
        clean = _scored(catalog, _with_faults(events, options, False, False), options)
        run: dict[str, Any] = {"seed": seed, "clean": clean.auc(clean, TASKS)}
        for variant in VARIANTS[1:]:
            far = variant in ("far_future", "both")
            late = variant in ("lagging", "both")
            faulty = _scored(catalog, _with_faults(events, options, far, late), options)
            run[variant] = faulty.compare(clean)
        runs.append(run)
    faulty_kinds = VARIANTS[1:]
    return {
        "events": options.events,
        "seeds": list(options.seeds),
        "lag_partition": options.lag_partition,
        "lag_s": options.lag_ms / 1000,
        "ahead_s": options.ahead_ms / 1000,
        "runs": runs,
        "mean_auc": {
            kind: {task: _mean([_auc_of(r[kind][task]) for r in runs]) for task in TASKS}
            for kind in VARIANTS
        },
        "mean_difference": {
            kind: {task: _mean([r[kind][task]["difference"] for r in runs]) for task in TASKS}
            for kind in faulty_kinds
        },
        "standard_error": {
            kind: {
                task: combined_error([r[kind][task]["standard_error"] for r in runs])
                for task in TASKS
            }
            for kind in faulty_kinds
        },
    }


@dataclass
class ScoredRun:
    """What one run predicted for each sample when it appeared, and the labels it resolved.

    A sample is named by its user, item and time; ``order`` lists them as they were scored.
    """

    predictions: dict[tuple[str, str, int], np.ndarray]
    labels: dict[tuple[str, str, int], list[float | None]]
    order: list[tuple[str, str, int]]

    def auc(self, truth: ScoredRun, tasks: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """Per task, the AUC of this run's predictions on ``truth``'s evaluated samples."""
        out = {}
        for t, task in enumerate(tasks):
            names, labels = truth.evaluated(t)
            scores = np.array([self.predictions[n][t] for n in names])
            out[task] = {"auc": round(auc(scores, labels), 4), "samples": len(names)}
        return out

    def compare(self, truth: ScoredRun) -> dict[str, dict[str, float]]:
        """Per task, this run's AUC, ``truth``'s and their difference with its standard error,
        on the evaluated samples of ``truth`` that this run scored too."""
        out = {}
        for t, task in enumerate(TASKS):
            names, labels = truth.evaluated(t, among=self.predictions)
            mine = np.array([self.predictions[n][t] for n in names])
            theirs = np.array([truth.predictions[n][t] for n in names])
            difference, error = paired_auc_difference(mine, theirs, labels)
            out[task] = {
                "auc": round(auc(mine, labels), 4),
                "clean_auc": round(auc(theirs, labels), 4),
                "difference": round(difference, 5),
                "standard_error": round(error, 5),
                "samples": len(names),
            }
        return out

    def evaluated(
        self, task: int, among: dict | None = None
    ) -> tuple[list[tuple[str, str, int]], np.ndarray]:
        """The samples of the second half with a label for ``task`` (and in ``among``)."""
        names = [
            n
            for n in self.order[len(self.order) // 2 :]
            if self.labels.get(n, [None] * 3)[task] is not None and (among is None or n in among)
        ]
        return names, np.array([self.labels[n][task] for n in names], dtype=np.float64)


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


def _scored(
    catalog: list[RawMessage], stream: list[RawMessage], options: EventTimeOptions
) -> ScoredRun:
    """Run the pipeline over ``stream``; record each sample's prediction and its labels."""
    settings = options.settings
    pipeline = Pipeline(mtl(settings.model_config()), labels=settings.label_config())
    pipeline.process_catalog(catalog, "items")
    run = ScoredRun({}, {}, [])
    scored, labelled = pipeline.quality.scored, pipeline.quality.labelled

    def record_scores(
        samples: list[TrackedSample], predictions: np.ndarray, model_version: int
    ) -> None:
        for sample, row in zip(samples, np.asarray(predictions), strict=True):
            name = (sample.user_id, sample.item_id, sample.ts)
            if name not in run.predictions:
                run.predictions[name] = row
                run.order.append(name)
        scored(samples, predictions, model_version)

    def record_labels(samples: list[TrackedSample], position: int) -> list[dict[str, Any]]:
        for sample in samples:
            known = run.labels.setdefault((sample.user_id, sample.item_id, sample.ts), [None] * 3)
            for t, value in enumerate(sample.labels()):
                if value is not None:
                    known[t] = value
        return labelled(samples, position)

    pipeline.quality.scored, pipeline.quality.labelled = record_scores, record_labels
    offsets: dict[int, int] = {}
    numbered = []
    for message in stream:  # offsets per partition in delivery order, as a topic has them
        offset = offsets.get(message.partition, 0)
        offsets[message.partition] = offset + 1
        numbered.append(dataclasses.replace(message, offset=offset))
    for start in range(0, len(numbered), options.batch):
        pipeline.process_events(numbered[start : start + options.batch])
    record_labels(pipeline.resolver.flush(), pipeline.position)  # every window closed
    return run


def _auc_of(entry: dict[str, float]) -> float:
    return entry["auc"]


def _mean(values: list[float]) -> float:
    return round(float(np.nanmean(values)), 4)


def combined_error(errors: list[float]) -> float:
    """The standard error of the mean of independent differences with these standard errors.

    >>> combined_error([0.003, 0.004])
    0.0025
    """
    return round(float(np.sqrt(np.nansum(np.square(errors))) / len(errors)), 5)
