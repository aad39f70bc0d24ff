"""Every Prometheus metric recstream exposes, declared once, with help text and units.

Names follow Prometheus conventions: prefix ``recstream_``, base units
(``_seconds``), ``_total`` for counters, labels from small bounded sets (task,
detector, feature, reason, type, table), never user or item ids. The Grafana
dashboards use exactly these names.

Example
-------
>>> metrics = Metrics()
>>> metrics.events.labels(type="click").inc()
>>> b"recstream_events_total{type=\\"click\\"} 1.0" in metrics.exposition()
True
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from online_models.base import TASKS
from online_models.drift import DETECTORS, FEATURES
from producers.contract import EVENT_TYPES, REASONS
from streams.control import COMMANDS

CONTROL_RESULTS = ("applied", "refused")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
SYNC_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 60.0)
UPDATE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """The service's metrics in a registry of their own (so tests can make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "recstream_events", "Valid events applied, by type.", ["type"], registry=r
        )
        self.invalid_events = Counter(
            "recstream_invalid_events",
            "Rejected messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.model_updates = Counter(
            "recstream_model_updates",
            "Gradient steps of the model (one per learned micro-batch of up to 2,048 samples).",
            registry=r,
        )
        self.model_version = Gauge(
            "recstream_model_version",
            "Version of the model that produced the latest scores.",
            registry=r,
        )
        self.model_frozen = Gauge(
            "recstream_model_frozen",
            "1 while learning is frozen (scores and labels go on, the model does not change).",
            registry=r,
        )
        self.control_commands = Counter(
            "recstream_control_commands",
            "Records of the control topic, by command (unknown: not readable) and result.",
            ["command", "result"],
            registry=r,
        )
        self.erased_events = Counter(
            "recstream_erased_events",
            "Events not applied because their user was erased after sending them.",
            registry=r,
        )
        self.samples_learned = Counter(
            "recstream_samples_learned", "Labels learned, by task.", ["task"], registry=r
        )
        self.auc = Gauge(
            "recstream_auc",
            "Rolling prequential ROC AUC, by task; NaN while the task warms up.",
            ["task"],
            registry=r,
        )
        self.logloss = Gauge(
            "recstream_logloss",
            "Rolling prequential log loss, by task; NaN while the task warms up.",
            ["task"],
            registry=r,
        )
        self.warmup_labels = Gauge(
            "recstream_quality_warmup_labels",
            "Labels a task has towards recstream_quality_warmup_needed (counting at most half "
            "of it per class); its AUC and log loss are shown once they meet.",
            ["task"],
            registry=r,
        )
        self.warmup_needed = Gauge(
            "recstream_quality_warmup_needed",
            "Labels a task needs, half positives and half negatives, before its AUC and log "
            "loss are shown.",
            registry=r,
        )
        self.label_rate = Gauge(
            "recstream_label_rate", "Rolling observed positive rate, by task.", ["task"], registry=r
        )
        self.mean_prediction = Gauge(
            "recstream_mean_prediction",
            "Rolling mean predicted probability, by task.",
            ["task"],
            registry=r,
        )
        self.drift_detections = Counter(
            "recstream_drift_detections",
            "Concept drift detections on loss streams.",
            ["task", "detector"],
            registry=r,
        )
        self.feature_psi = Gauge(
            "recstream_feature_psi",
            "Population stability index against the reference window.",
            ["feature"],
            registry=r,
        )
        self.event_to_score_latency = Histogram(
            "recstream_event_to_score_latency_seconds",
            "Event time of the triggering event to its user's scores being sent.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.update_duration = Histogram(
            "recstream_update_duration_seconds",
            "Wall time of one events micro-batch before ranking (decode, labels, score, learn).",
            buckets=UPDATE_BUCKETS,
            registry=r,
        )
        self.scores_published = Counter(
            "recstream_scores_published", "Score messages (one user's top-K) published.", registry=r
        )
        self.demand_deviance = Gauge(
            "recstream_demand_deviance",
            "Mean Poisson deviance of the item demand forecasts (purchases over the demand "
            "horizon) resolved at the last demand points; NaN before the first resolves.",
            registry=r,
        )
        self.demand_forecasts_published = Counter(
            "recstream_demand_forecasts_published",
            "Item demand forecasts published to the demand topic.",
            registry=r,
        )
        self.embedding_rows = Gauge(
            "recstream_embedding_rows",
            "Rows in use in each embedding table.",
            ["table"],
            registry=r,
        )
        self.cold_items = Gauge(
            "recstream_cold_items",
            "Items in the model's item table still too little seen for their own embedding.",
            registry=r,
        )
        self.catalog_items = Gauge(
            "recstream_catalog_items",
            "Items whose content the worker knows (catalog, or events for undescribed items).",
            registry=r,
        )
        self.catalog_items_withdrawn = Gauge(
            "recstream_catalog_items_withdrawn",
            "Known items the catalog withdrew from serving (available: false).",
            registry=r,
        )
        self.catalog_items_removed = Counter(
            "recstream_catalog_items_removed",
            "Tombstones applied from the items topic (each removes its item).",
            registry=r,
        )
        self.pending_labels = Gauge(
            "recstream_pending_labels",
            "Samples with a label still open (waiting for a click, cart or purchase).",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "recstream_assigned_partitions",
            "Partitions of the events topic this worker reads.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "recstream_consumer_lag",
            "Messages of an owned events partition not yet applied.",
            ["partition"],
            registry=r,
        )
        self.consumer_lag_seconds = Gauge(
            "recstream_consumer_lag_seconds",
            "How far behind an owned events partition is, in seconds: now minus the event "
            "time of its last applied event while messages wait, 0 when caught up.",
            ["partition"],
            registry=r,
        )
        self.offset_resets = Counter(
            "recstream_offset_resets",
            "Times a partition no longer held the offset the worker's state had reached "
            "(topic recreated, broker restarted empty, retention) and was read again from "
            "its start, by topic (events, items, control).",
            ["topic"],
            registry=r,
        )
        self.pipeline_cpu = Counter(
            "recstream_pipeline_cpu_seconds",
            "CPU time spent applying event batches (decode, labels, score, learn, rank); "
            "its rate is the share of a core the model path uses.",
            registry=r,
        )
        self.sync_sent = Counter(
            "recstream_sync_deltas_sent",
            "Model updates this worker published to its peers on the sync topic.",
            registry=r,
        )
        self.sync_applied = Counter(
            "recstream_sync_deltas_applied",
            "Peers' model updates this worker applied.",
            registry=r,
        )
        self.sync_bytes = Counter(
            "recstream_sync_bytes_sent",
            "Bytes of model updates this worker published (compressed record values).",
            registry=r,
        )
        self.sync_lag = Histogram(
            "recstream_sync_lag_seconds",
            "Age of a peer's model update when this worker applied it: how stale the "
            "peers' learning is here.",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.partitions_taken_over = Counter(
            "recstream_partitions_taken_over",
            "Partitions this worker took over with the state their previous owner published.",
            registry=r,
        )
        self.snapshots_published = Counter(
            "recstream_model_snapshots_published",
            "Model snapshots published for joining workers.",
            registry=r,
        )
        self.checkpoints = Counter("recstream_checkpoints", "Checkpoints written.", registry=r)
        self.last_checkpoint = Gauge(
            "recstream_last_checkpoint_timestamp_seconds",
            "Unix time of the newest checkpoint written.",
            registry=r,
        )
        self._initialise_label_sets()

    def _initialise_label_sets(self) -> None:
        """Expose every known series from the start, so dashboards never show 'no data'."""
        for event_type in EVENT_TYPES:
            self.events.labels(type=event_type)
        for reason in REASONS:
            self.invalid_events.labels(reason=reason)
        for feature in FEATURES:
            self.feature_psi.labels(feature=feature)
        for topic in ("events", "items", "control", "sync"):
            self.offset_resets.labels(topic=topic)
        for command in COMMANDS:
            for result in CONTROL_RESULTS:
                self.control_commands.labels(command=command, result=result)
        self.control_commands.labels(command="unknown", result="refused")
        for task in TASKS:
            for detector in DETECTORS:
                self.drift_detections.labels(task=task, detector=detector)
            for family in (
                self.samples_learned,
                self.warmup_labels,
                self.label_rate,
                self.mean_prediction,
            ):
                family.labels(task=task)
            self.auc.labels(task=task).set(float("nan"))  # not 0: nothing is known yet
            self.logloss.labels(task=task).set(float("nan"))
        self.demand_deviance.set(float("nan"))

    def counter_values(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Every counter's series and value, to carry across a restart in a checkpoint.

        >>> metrics = Metrics()
        >>> metrics.events.labels(type="click").inc(3)
        >>> again = Metrics()
        >>> again.continue_counters(metrics.counter_values())
        >>> again.registry.get_sample_value("recstream_events_total", {"type": "click"})
        3.0
        """
        return {
            family.name: [
                (dict(s.labels), s.value) for s in family.samples if s.name.endswith("_total")
            ]
            for family in self.registry.collect()
            if family.type == "counter"
        }

    def continue_counters(self, values: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        """Add counter values saved by :meth:`counter_values` (unknown names are ignored)."""
        for _, child, value in self._saved_series(values):
            child.inc(value)

    def raise_counters_to(self, values: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        """Bring each counter up to the value saved by :meth:`counter_values` where it is lower
        (a restart replaying updates it sent after its checkpoint).

        >>> metrics, later = Metrics(), Metrics()
        >>> later.events.labels(type="click").inc(5)
        >>> metrics.events.labels(type="click").inc(2)
        >>> metrics.raise_counters_to(later.counter_values())
        >>> metrics.registry.get_sample_value("recstream_events_total", {"type": "click"})
        5.0
        """
        for now, child, value in self._saved_series(values):
            if value > now:
                child.inc(value - now)

    def _saved_series(
        self, values: dict[str, list[tuple[dict[str, str], float]]]
    ) -> Iterator[tuple[float, Counter, float]]:
        """(current value, counter child, saved value) of each saved series this registry has."""
        counters = {
            counter.describe()[0].name: counter
            for counter in vars(self).values()
            if isinstance(counter, Counter)
        }
        for name, series in values.items():
            counter = counters.get(name)
            for labels, value in series if counter is not None else ():
                now = self.registry.get_sample_value(f"{name}_total", labels) or 0.0
                yield now, counter.labels(**labels) if labels else counter, value

    def exposition(self) -> bytes:
        """The text exposition format, as served on /metrics."""
        return generate_latest(self.registry)
