"""The worker's whole job on one micro-batch, with no Kafka in sight: decode, learn, score.

:class:`Pipeline` takes raw messages (partition, offset, key, value) and
returns what must be sent: dead letters and score records. Per batch:

1. skip messages below the next offset already applied (a replay after a
   restart applies nothing twice); decode and validate each message with the
   shared contract; dead-letter what fails, and duplicates, with the reason;
2. turn events into samples with delayed labels in the label stage
   (:mod:`online_models.label_stage`), with event time from per-partition
   watermarks (an event stamped far ahead is clamped, see
   :class:`~online_models.labels.EventClock`);
3. have the model remember and score the new samples as it was *before*
   this batch (prequential), then learn the label stream of the batch;
4. update quality, drift and candidate state;
5. rank the top-K for every user with a funnel event in the batch (one
   refresh per user per batch: the debounce) and return the score records;
   then score the next slice of the catalog for the items the model rates
   best (:mod:`streams.rated`), for the next batches' candidates;
6. count the batch's events for item demand (:mod:`online_models.demand`),
   resolve and learn the demand points its event time closes, and queue
   the forecasts of the points it opens that changed (:meth:`Pipeline.take_demand`;
   in a group of workers, only the one that leads demand makes points).

Everything it knows goes to and from one dict (:meth:`Pipeline.state_dict`),
together with the next offset to read per partition, so a checkpoint covers
exactly the events that were applied.

Example
-------
>>> from online_models.config import MultiTaskConfig
>>> from online_models.learner import mtl
>>> pipeline = Pipeline(mtl(MultiTaskConfig(user_rows=1024, item_rows=1024)))
>>> out = pipeline.process_events([RawMessage(0, 0, b"u1", b"not json")], now_ms=0)
>>> out.dead_letters[0].reason, pipeline.offsets
('not_json', {0: 1})
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from online_models.base import Learner, score_then_learn
from online_models.catalog import Catalog
from online_models.demand import DemandConfig, DemandForecaster
from online_models.drift import FeatureDriftMonitor
from online_models.label_stage import LabelStage
from online_models.labels import LabelConfig, LabelResolver, TrackedSample
from online_models.layout import label_matrix
from online_models.learner import MultiTaskLearner
from online_models.live_quality import LiveQuality
from online_models.order_value import order_samples
from producers.contract import (
    CatalogItem,
    CatalogRemoval,
    Event,
    InvalidRecord,
    decode_catalog_record,
    decode_event,
)
from streams.candidates import CandidateConfig, CandidatePool
from streams.erasure import Erasures
from streams.ranking import Ranker, RankingConfig
from streams.rated import RatedItems


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One Kafka message as the pipeline sees it (``timestamp``: its record time, ms; -1 if
    unknown, which counts as sent before any erasure)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = -1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message, ready for ``events.dlq`` (see :meth:`to_json`)."""

    key: bytes | None
    reason: str
    detail: str
    raw: bytes | None
    topic: str
    partition: int
    offset: int

    def to_json(self) -> bytes:
        raw = (self.raw or b"")[:4096].decode("utf-8", errors="replace")
        return json.dumps(
            {
                "error": f"{self.reason}: {self.detail}",
                "reason": self.reason,
                "raw": raw,
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
            }
        ).encode()


@dataclass
class BatchResult:
    """What one batch produced."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    learned: tuple[int, int, int] = (0, 0, 0)
    update_seconds: float = 0.0
    erased: int = 0  # events skipped: sent before their user's erasure


@dataclass
class CatalogResult:
    """What one batch of catalog messages produced: dead letters, and tombstones applied."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    removed: int = 0


class Pipeline:
    """Decode -> label -> score-then-learn -> rank, for one worker's input."""

    def __init__(
        self,
        learner: Learner,
        labels: LabelConfig | None = None,
        ranking: RankingConfig | None = None,
        candidates: CandidateConfig | None = None,
        events_topic: str = "events",
        demand: DemandConfig | None = None,
    ) -> None:
        self.learner = learner
        self.demand = (  # item demand rides on the multi-task net's item side
            DemandForecaster(learner, demand)
            if demand is not None and isinstance(learner, MultiTaskLearner)
            else None
        )
        self.events_topic = events_topic
        labels = labels or LabelConfig()
        self.catalog = Catalog(labels.max_catalog_items)  # one catalog: labels and candidates
        self.labels = LabelStage(labels, self.catalog)
        self.quality = LiveQuality()
        self.features = FeatureDriftMonitor()
        self.pool = CandidatePool(candidates, self.catalog)
        self.ranker = Ranker(ranking)
        self.rated = RatedItems(self.pool.config.rated, self.pool.config.refresh_every)
        self.offsets: dict[int, int] = {}
        self.erasures = Erasures()
        self.frozen = False  # scoring and labels go on, nothing is learned
        self.applied: Counter[str] = Counter()
        self.applied_in: Counter[int] = Counter()  # events applied per partition
        self.rejected: Counter[str] = Counter()
        self.position = 0

    # ---------------------------------------------------------------- catalog

    def process_catalog(
        self, messages: Sequence[RawMessage], topic: str, now_ms: int | None = None
    ) -> CatalogResult:
        """Catalog records update item content and availability, tombstones remove items;
        bad ones become dead letters."""
        out = CatalogResult()
        described: list[CatalogItem] = []
        for message in messages:
            try:
                record = decode_catalog_record(message.key, message.value, now_ms)
            except InvalidRecord as bad:
                out.dead_letters.append(self._dead(message, bad, topic))
                continue
            if isinstance(record, CatalogRemoval):
                self.pool.remove(record.item_id)
                out.removed += 1
            else:
                self.pool.observe_catalog(record)
                described.append(record)
        if self.demand is not None:
            self.demand.observe_catalog_batch(
                [r.item_id for r in described],
                [r.category for r in described],
                [r.brand for r in described],
                [r.price for r in described],
                [r.ts for r in described],
            )
        return out

    # ---------------------------------------------------------------- events

    def process_events(
        self, messages: Sequence[RawMessage], now_ms: int | None = None
    ) -> BatchResult:
        """Apply one micro-batch of ``events`` messages; return what to publish."""
        out = BatchResult()
        started = time.perf_counter()
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        new: list[TrackedSample] = []
        learnable: list[TrackedSample] = []
        triggers: dict[str, int] = {}
        sequence: dict[str, int] = {}  # user -> offset of the user's last event
        for message in messages:
            if message.offset < self.offsets.get(message.partition, 0):
                continue  # applied before the checkpoint this run restored
            self.offsets[message.partition] = message.offset + 1
            try:
                event = decode_event(message.value, now_ms)
            except InvalidRecord as bad:
                out.dead_letters.append(self._dead(message, bad, self.events_topic))
                continue
            if self.erasures.covers(event.user_id, message.timestamp):
                out.erased += 1  # sent before its user was erased: never applied again
                continue
            resolution = self.labels.observe(event, message.partition)
            if resolution.event is None:
                bad = InvalidRecord("duplicate", f"event_id {event.event_id!r} was applied before")
                out.dead_letters.append(self._dead(message, bad, self.events_topic))
                continue
            sent_ts = event.ts  # the score record's event_ts: the time its producer gave it
            event = resolution.event  # its ts clamped when far ahead of event time
            out.events.append(event)
            self.applied_in[message.partition] += 1
            new += resolution.new
            learnable += resolution.to_learn()
            if event.type != "impression":
                triggers[event.user_id] = sent_ts
                sequence[event.user_id] = message.offset
        self.applied.update(event.type for event in out.events)
        self.position += len(out.events)
        sampled = self.labels.close_batch()  # without impressions: clicks and their negatives
        new += sampled
        learnable += sampled
        to_learn = self.labels.labels(new, learnable).samples  # resolved, frozen or not
        to_learn += order_samples(out.events, self.catalog.get)  # the value head's
        if self.frozen:
            to_learn = []
        scored_by = self.learner.model_version
        predictions = score_then_learn(self.learner, new, to_learn)
        if new:
            self.quality.scored(new, predictions, scored_by)
        if to_learn:
            known = ~np.isnan(label_matrix(to_learn))
            out.learned = tuple(np.count_nonzero(known, axis=0).tolist())
        if learnable:  # quality is measured on the labels that happened, not on provisional ones
            out.drift = self.quality.labelled(learnable, self.position)
            if out.drift:
                self.features.rebase()
        self.features.observe(out.events)
        self.pool.observe(out.events)
        out.update_seconds = time.perf_counter() - started
        out.scores = self.refresh_scores(triggers)
        for record in out.scores:  # newer records of a user carry a higher seq
            record["seq"] = sequence[record["user_id"]]
        self._rate_catalog(out.events)  # after the scores: off the way from event to score
        if self.demand is not None:
            self.demand.observe(out.events)
        return out

    def _rate_catalog(self, events: Sequence[Event]) -> None:
        """Score the next slice of the catalog for the rated source (:mod:`streams.rated`)."""
        funnel = sum(event.type != "impression" for event in events)
        if funnel and self.rated.advance(
            funnel, self.learner, self.ranker, self.catalog, events[-1].ts
        ):
            self.pool.rated = self.rated.best

    def erase_user(self, user_id: str, requested_ms: int) -> None:
        """Remove everything held about ``user_id``; skip their events sent until ``requested_ms``.

        Their embedding row, history, statistics and scoring snapshots, their
        pending labels and their recent items go; their predictions waiting
        for those labels leave the quality windows (see :mod:`streams.erasure`).
        """
        self.erasures.add(user_id, requested_ms)
        self.learner.forget_user(user_id)
        self.quality.forget(self.labels.forget_user(user_id))
        self.pool.forget_user(user_id)

    def replace_model(self, learner: Learner) -> None:
        """Score and learn with ``learner`` (an earlier model) from now on; everything else,
        offsets and labels included, stays. Users erased since it was saved are erased
        from it too."""
        for user_id in self.erasures.erased(list(learner.users())):
            learner.forget_user(user_id)
        self.learner = learner
        self.rated.forget()  # the items it rates best are found again as the scan goes on
        self.pool.rated = []
        if self.demand is not None:  # its head is the net's: it learns with the model served
            self.demand.learner = learner

    def take_demand(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` queued item demand records (default: a round's), to publish."""
        if self.demand is None:
            return []
        return [forecast.to_record() for forecast in self.demand.take(limit)]

    @property
    def resolver(self) -> LabelResolver:
        """The label stage's resolver (event time, open samples)."""
        return self.labels.resolver

    def refresh_scores(self, triggers: dict[str, int]) -> list[dict[str, Any]]:
        """Top-K records for these users (user -> event time of the triggering event)."""
        if not triggers:
            return []
        return self.ranker.rank_block(
            self.learner, self.pool.block(triggers), int(time.time() * 1000)
        )

    def _dead(self, message: RawMessage, bad: InvalidRecord, topic: str) -> DeadLetter:
        self.rejected[bad.reason] += 1
        return DeadLetter(
            message.key,
            bad.reason,
            bad.detail,
            message.value,
            topic,
            message.partition,
            message.offset,
        )

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything the worker knows, as plain values and tensors."""
        return {
            "catalog": self.catalog.state_dict(),
            "learner": self.learner.state_dict(),
            "labels": self.labels.state_dict(),
            "quality": self.quality.state_dict(),
            "features": self.features.state_dict(),
            "pool": self.pool.state_dict(),
            "rated": self.rated.state_dict(),
            "applied": dict(self.applied),
            "applied_in": [[p, n] for p, n in self.applied_in.items()],
            "rejected": dict(self.rejected),
            "position": self.position,
            "erasures": self.erasures.state_dict(),
            "frozen": self.frozen,
            "demand": None if self.demand is None else self.demand.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], offsets: dict[int, int]) -> None:
        """Restore from :meth:`state_dict` and the offsets the checkpoint covers."""
        self.catalog.load_state_dict(state.get("catalog", []))  # older: in labels and pool
        self.learner.load_state_dict(state["learner"])
        self.labels.load_state_dict(state.get("labels") or _older_labels(state))
        self.quality.load_state_dict(state["quality"])
        self.features.load_state_dict(state["features"])
        self.pool.load_state_dict(state["pool"])
        if "rated" in state:  # older checkpoints: the scan starts afresh
            self.rated.load_state_dict(state["rated"])
        self.pool.rated = self.rated.best
        self.applied = Counter(state["applied"])
        self.applied_in = Counter({int(p): int(n) for p, n in state.get("applied_in", [])})
        self.rejected = Counter(state["rejected"])
        self.position = int(state["position"])
        self.offsets = dict(offsets)
        self.erasures.load_state_dict(state.get("erasures", []))
        self.frozen = bool(state.get("frozen", False))
        if self.demand is not None and state.get("demand"):  # older: demand starts afresh
            self.demand.load_state_dict(state["demand"])


def _older_labels(state: dict[str, Any]) -> dict[str, Any]:
    """The label stage's state in a checkpoint from before the stage: the resolver's at the
    top, the provisional waits inside the learner's."""
    return {"resolver": state["resolver"], "waits": state["learner"].get("feedback")}
