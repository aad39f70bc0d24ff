"""``recstream bench quality``: prequential replay comparing every model on one stream.

One pass over the source (the simulator, a real log or a recording of a
stream, :mod:`producers.recording`) builds ONE sample
stream with the label stage (:class:`~online_models.label_stage.LabelStage`,
as the worker's), cut into micro-batches of about ``batch_size`` samples
(new plus labelled; 2,048 by default, about what the worker's default
micro-batch of 1,000 events carries) that span at most ``batch_span_s``
of event time (:data:`BATCH_SPAN_S`; ``--batch-span``). A worker's
micro-batch spans at most its batch wait, and a slow shop's holds a few
events: cut by size alone, the bundled REES46 sample's batches spanned
minutes and Taobao's a day, so every list and every feature was that
stale (REES46 click hit rate at 10 of ``mtl`` 0.197 in 2,048-sample
batches, 0.36 in 5-s ones). Every model then runs over the same
micro-batches with the worker's step
(:func:`~online_models.base.score_then_learn`): it remembers and scores the
batch's new samples, then learns the batch's label stream (resolved labels,
corrections and provisional negatives). Scores are made before any of a
sample's labels is learned, and every model learns the same labels
(``labels_learned`` per model and task shows it).

Reported per model (:func:`online_models.evaluation.prequential_metrics`):
per-task AUC and log loss over samples that appeared in the second half of
the stream, AUC on cold and warm items, and ``learn_events_per_s``: samples
learned per second of the model's own predict + learn time, measured the same
way for every model as process CPU time (``time.process_time``, all threads),
so that other work on a shared machine does not slow whichever model happens
to run beside it (wall time did: one run's ``mtl`` went from ~60k to ~4k/s
while another process held the cores). For the
simulator the ``oracle`` scores every sample with the shop's true
probabilities at the time it appeared. ``comparisons`` gives, per task,
``mtl``'s AUC minus each other model's over the same samples, with its
DeLong standard error: a difference well within two standard errors is not
one. ``mtl`` is watched as the worker watches it: its labels and
predictions go through :class:`~online_models.live_quality.LiveQuality`
into the drift detectors (loss streams, calibration per item category).
The report's ``live`` is that LiveQuality's summary at the end of the
stream, over the worker's window (the last 20,000 labels per task, in
scoring order): per task ``auc``, ``logloss``, ``labels`` and
``positives``, the figures a running worker shows (the demo report's
``tasks.<task>``; ``auc`` and ``logloss`` are ``null`` until a task has 100
labels of each class). ``drift.calibration`` is taken from the same window's
last 5,000 labels per task; ``injected_at`` lists the simulator's drift
points (event indexes).

Windows per source (event time): the simulator clicks 2-30 s after an
impression and converts within 30 + 30 minutes, so click window 60 s and
conversion window 60 min; REES46 converts within 30 minutes (99% of carts
in the sample), Taobao within days (24 h); a recording (``recstream``) gets
the worker's defaults (:class:`~streams.settings.Settings`: click window
10 min, click wait 60 s, conversion window 60 min). ``--click-window``,
``--click-wait`` and ``--conversion-window`` (seconds, as the worker's
flags) replace the source's value of each window given; with any of them,
or for a recording, the label stage is exactly the one a worker with those
settings runs (:meth:`Settings.label_config`, waits before provisional
negatives included). Impressions: the simulator's follow
``--no-impressions``; a CSV log has none; a recording is taken to carry
impressions when any of its events is one (:func:`recording_has_impressions`),
unless ``--no-impressions`` says it has none (the worker's flag: negatives
are then sampled). The report's ``impressions`` and ``windows`` say what was
used.

Top-K lists (:mod:`streams.bench.topk`, the report's ``topk``): the
product judged by what it serves. For each click, cart and purchase of the
second half (about 5,000 per task at most, sampled over the whole half), the
list the user would have been served just before its micro-batch: ``mtl``'s
(the worker's candidate pool and ranker, the model as it was before the
micro-batch; its run calls :meth:`~streams.bench.topk.TopKEvaluation.serve`
through ``run_model``'s ``before_step`` hook), the simulator's ``oracle``
(per task, the catalog's best 10 under the shop's truth) and three lists a
shop would try first: ``popular_now``, ``recently_interacted`` and
``category_popular`` (recency-decayed, half-life 1 h for the simulator,
30 min REES46, 1 day Taobao). Per list and task: ``hit_rate_at_10``,
``ndcg_at_10``, on the simulator ``expected_at_10`` (the expected clicks,
carts or purchases of the list under the truth), each with its bootstrap
standard error over users (``*_se``), and ``events``; ``comparisons`` gives
``mtl`` minus each list with paired errors. With ``progress`` (the command
line) a table of them ends the output on stderr.

The command line (:mod:`streams.cli`) declares the flags (``--source
--format --events --seed --no-impressions --click-window --click-wait
--conversion-window --no-drift --report --plot --batch-size --models
--init-from``); :func:`options_from_args` reads them and :func:`run` does the
work. ``--init-from`` starts ``mtl`` from another shop's worker checkpoint
(:func:`online_models.transfer.init_from`); ``QualityOptions.shop`` and
``drift_at`` choose the simulated shop and where its taste shift comes
(``recstream bench transfer`` sets them).

Example
-------
>>> report = run(QualityOptions(events=1_500, models=("popularity",), progress=False))
>>> sorted(report["models"]["popularity"]["tasks"]), report["drift"]["injected_at"]
(['cart', 'click', 'purchase'], [900])
>>> options = QualityOptions(click_window_s=30, conversion_window_s=600)
>>> label_config(options, None).provisional_waits_ms  # as a worker's with these flags
(30000, 300000, 300000)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from online_models.base import TASKS, Learner, score_then_learn
from online_models.baselines import Popularity, RiverFunnelLR, VWFunnel
from online_models.demand import DemandConfig, DemandForecaster, Resolved, poisson_deviance
from online_models.drift import ConceptDriftMonitor, FeatureDriftMonitor
from online_models.evaluation import (
    InteractionCounter,
    SampleLog,
    leak_auc,
    paired_comparison,
    prequential_metrics,
    rolling_auc,
)
from online_models.label_stage import LabelStage
from online_models.labels import LabelConfig, LabelResolver, TrackedSample
from online_models.layout import label_matrix
from online_models.live_quality import LiveQuality
from online_models.order_value import order_samples
from producers.contract import CatalogItem, Event
from producers.recording import FORMAT as RECORDING
from streams.bench.topk import DEFAULT_HALF_LIFE_S, HALF_LIFE_S, TopKEvaluation, print_summary
from streams.bench.value import ValueEvaluation
from streams.progress import optional_progress
from streams.settings import Settings

MODEL_NAMES: tuple[str, ...] = ("mtl", "river_lr", "vw", "single_task", "id_only", "popularity")
DRIFT_AT = 0.6
"""The simulated taste shift happens after this share of the events."""
BATCH_SPAN_S = 5.0
"""Event time a micro-batch spans at most, seconds (see the module docstring): a worker's
spans at most its batch wait (0.1 s); 5 s keeps a replay of the simulator's 200,000
events (16 a second with impressions) to a few minutes."""
MINUTE_MS = 60_000
CALIBRATION_LABELS = 5_000
"""Labels per task over which the report's calibration (mtl's) is taken."""
WINDOW_FLAGS: tuple[str, ...] = ("click_window_s", "click_wait_s", "conversion_window_s")
"""The label windows settable per run, named as the worker's settings."""
SOURCE_WINDOWS: dict[str, dict[str, float]] = {
    "sim": {"click_window_s": 60.0, "click_wait_s": 60.0, "conversion_window_s": 3_600.0},
    "rees46": {"click_window_s": 600.0, "click_wait_s": 60.0, "conversion_window_s": 1_800.0},
    "taobao": {"click_window_s": 600.0, "click_wait_s": 60.0, "conversion_window_s": 86_400.0},
}
"""Each source's windows in seconds (see the module docstring); a recording: the worker's."""


def _model_factories() -> dict[str, Callable[[], Learner]]:
    from online_models.learner import id_only, mtl, single_task

    return {
        "mtl": mtl,
        "river_lr": RiverFunnelLR,
        "vw": VWFunnel,
        "single_task": single_task,
        "id_only": id_only,
        "popularity": Popularity,
    }


@dataclass(frozen=True)
class QualityOptions:
    """What to replay and which models to compare."""

    source: str = "sim"
    format: str | None = None
    events: int | None = 200_000
    seed: int = 7
    impressions: bool = True
    click_window_s: float | None = None
    click_wait_s: float | None = None
    conversion_window_s: float | None = None
    drift: bool = True
    drift_at: float = DRIFT_AT
    shop: int = 0
    init_from: Path | None = None
    report: Path | None = None
    plot: Path | None = None
    batch_size: int = 2048
    batch_span_s: float | None = BATCH_SPAN_S
    models: tuple[str, ...] = MODEL_NAMES
    progress: bool = True
    topk: bool = True
    demand_horizon_s: float | None = DemandConfig.horizon_s


def options_from_args(args: argparse.Namespace) -> QualityOptions:
    """Options from parsed source and bench flags."""
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = sorted(set(models) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {MODEL_NAMES}")
    events = args.events if args.events is not None or args.source != "sim" else 200_000
    span = getattr(args, "batch_span_s", None)  # None: the default; inf: by size only
    return QualityOptions(
        source=args.source,
        format=args.format,
        events=events,
        seed=args.seed,
        impressions=args.impressions,
        click_window_s=getattr(args, "click_window_s", None),
        click_wait_s=getattr(args, "click_wait_s", None),
        conversion_window_s=getattr(args, "conversion_window_s", None),
        drift=args.drift,
        init_from=getattr(args, "init_from", None),
        report=args.report,
        plot=args.plot,
        batch_size=args.batch_size,
        batch_span_s=BATCH_SPAN_S if span is None else span,
        models=models,
        demand_horizon_s=getattr(args, "demand_horizon_s", DemandConfig.horizon_s),
    )


# ------------------------------------------------------------------ the stream


@dataclass
class Step:
    """One micro-batch: samples to score, labels to learn, the events behind them.

    ``resolved`` are the labels that happened (the resolver's, for drift
    detection), ``learn`` the label stage's stream made from them; ``truth``
    holds the simulator's entire-space probabilities of ``new``.
    """

    position: int
    new: list[TrackedSample] = field(default_factory=list)
    resolved: list[TrackedSample] = field(default_factory=list)
    learn: list[TrackedSample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    truth: np.ndarray | None = None
    catalog: list[CatalogItem] = field(default_factory=list)


@dataclass
class SampleStream:
    """The prepared stream every model runs over."""

    steps: list[Step]
    log: SampleLog
    events: int
    label_counts: dict[str, int]
    oracle: np.ndarray | None
    injected_at: list[int]
    label_config: LabelConfig = field(default_factory=LabelConfig)
    topk: TopKEvaluation | None = None
    shop: Any = None
    tail: list[Event] = field(default_factory=list)


def label_config(
    options: QualityOptions, fmt: str | None, impressions: bool | None = None
) -> LabelConfig:
    """The label stage's configuration for the source (see the module docstring).

    ``fmt`` is the log's format, ``None`` for the simulator. ``impressions``
    says whether the stream carries impressions; ``None`` takes
    ``options.impressions`` for the simulator and a recording, False for a
    CSV log. Without window flags the simulator and the CSV logs keep their
    own configuration; with any, or for a recording, it is the worker's
    (:func:`worker_settings`).
    """
    if impressions is None:
        impressions = options.impressions if fmt in (None, RECORDING) else False
    if fmt == RECORDING or any(getattr(options, name) is not None for name in WINDOW_FLAGS):
        return worker_settings(options, fmt, impressions).label_config()
    if fmt is None:
        return LabelConfig(
            impressions=impressions,
            click_window_ms=MINUTE_MS,
            conversion_window_ms=60 * MINUTE_MS,
            seed=options.seed,
        )
    conversion = 30 * MINUTE_MS if fmt == "rees46" else 24 * 60 * MINUTE_MS
    return LabelConfig(impressions=impressions, conversion_window_ms=conversion, seed=options.seed)


def worker_settings(options: QualityOptions, fmt: str | None, impressions: bool) -> Settings:
    """The settings of a worker labelling this stream: the window flags given, the source's
    windows (:data:`SOURCE_WINDOWS`, or the worker's defaults for a recording) for the others.

    >>> options = QualityOptions(source="rec.jsonl", conversion_window_s=120)
    >>> s = worker_settings(options, "recstream", True)
    >>> s.click_window_s, s.click_wait_s, s.conversion_window_s
    (600.0, 60.0, 120)
    """
    windows = dict(SOURCE_WINDOWS.get(fmt or "sim", {}))
    for name in WINDOW_FLAGS:
        value = getattr(options, name)
        if value is not None:
            if not (math.isfinite(value) and value > 0):
                flag = "--" + name.removesuffix("_s").replace("_", "-")
                raise ValueError(f"{flag} must be a positive number of seconds, not {value}")
            windows[name] = value
    return Settings(impressions=impressions, **windows)


def stream_impressions(options: QualityOptions, fmt: str | None) -> bool:
    """Whether the source's stream carries impressions (see the module docstring)."""
    if fmt is None:
        return options.impressions
    if fmt == RECORDING:
        return options.impressions and recording_has_impressions(Path(options.source))
    return False


def recording_has_impressions(path: Path) -> bool:
    """True if any line of a recording is an impression event (lines that are not JSON, or
    not an impression, are passed over; a stream with impressions has one within its first
    lines, one without is read to the end).

    >>> import tempfile
    >>> rec = Path(tempfile.mkdtemp()) / "rec.jsonl"
    >>> _ = rec.write_text('{"item_id":"impression","ts":1}\\n')
    >>> recording_has_impressions(rec)
    False
    >>> _ = rec.write_text('{"item_id":"impression","ts":1}\\n{"type":"impression"}\\n')
    >>> recording_has_impressions(rec)
    True
    """
    import orjson

    with path.open("rb") as file:
        for line in file:
            if b"impression" not in line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict) and obj.get("type") == "impression":
                return True
    return False


def label_horizon_ms(config: LabelConfig) -> int:
    """How long after a sample appears its last label may still change (ms)."""
    click = config.click_window_ms if config.impressions else 0
    return click + config.conversion_window_ms


def build_stream(options: QualityOptions) -> SampleStream:
    """Read the source once and turn it into micro-batches of samples.

    The first ``options.events`` events make the samples. The source is then
    read on, without new samples, until every window of those samples has
    closed, so the last samples get their true labels too (the simulator is
    asked for enough events); a log that ends sooner closes the windows it
    cuts short at its end (:func:`_drain`).
    """
    fmt = None if options.source == "sim" else _log_format(options)
    config = label_config(options, fmt, stream_impressions(options, fmt))
    records, shop, breaks = _open_source(options, fmt, label_horizon_ms(config))
    topk = _topk_evaluation(options, fmt, shop, config) if options.topk else None
    stage = LabelStage(config)
    resolver = stage.resolver
    counter = InteractionCounter()
    seen: set[str] = set()  # items before the sample's window: the leak check's one feature
    not_seen_yet: list[str] = []
    sample_log = SampleLog()
    steps: list[Step] = []
    step = Step(position=0)

    def on_catalog(record: CatalogItem) -> None:
        step.catalog.append(record)  # the step being filled (demand learns items' births)
        if topk is not None:
            topk.announce(record)

    numbered = _numbered(records, resolver, on_catalog)

    def close(step: Step, final: bool = False) -> None:
        sampled = stage.close_batch(final)  # without impressions: clicks and their negatives
        sample_log.created(sampled, step.position, [counter.is_cold(s.item_id) for s in sampled])
        step.new += sampled
        step.resolved += sampled
        sample_log.labelled(sampled, step.position)
        sample_log.seen_before(step.new, [s.item_id in seen for s in step.new])
        not_seen_yet.extend(event.item_id for event in step.events)
        if not resolver.clicks_in_batch:  # clicks waiting for more are drawn with these items
            seen.update(not_seen_yet)
            not_seen_yet.clear()
        step.learn = stage.labels(step.new, step.resolved).samples
        step.learn += order_samples(step.events, resolver.catalog.get)  # the value head's
        steps.append(step)
        if shop is not None:
            step.truth = _truth(shop, step.new)
        if topk is not None:
            topk.close_step(step.position, step.events)

    with optional_progress(options.progress, "prepare stream", options.events) as advance:
        span_ms = math.inf if options.batch_span_s is None else options.batch_span_s * 1_000
        for index, event in numbered:
            if step.events and event.ts - step.events[0].ts >= span_ms:
                close(step)
                advance(len(step.events))
                step = Step(position=index - 1)
            resolution = stage.observe(event)
            cold = [counter.is_cold(s.item_id) for s in resolution.new]
            counter.observe(event)
            sample_log.created(resolution.new, index, cold)
            resolved = resolution.to_learn()
            sample_log.labelled(resolved, index)
            step.new += resolution.new
            step.resolved += resolved
            step.events.append(event)
            step.position = index
            last = options.events is not None and index + 1 >= options.events
            pending = resolver.clicks_in_batch * (1 + config.negatives_per_click)
            size = len(step.new) + len(step.resolved) + pending
            if size >= options.batch_size or index + 1 in breaks or last:
                close(step, final=last)
                advance(len(step.events))
                step = Step(position=index)
            if last:
                break
        if step.events:
            close(step, final=True)
    if topk is not None:
        topk.finish()
    tail = _drain(numbered, resolver, sample_log, resolver.watermark + label_horizon_ms(config))
    oracle = None
    if shop is not None:
        oracle = np.full((len(sample_log), 3), np.nan)
        for done in steps:
            oracle[[s.key for s in done.new]] = done.truth
    return SampleStream(
        steps=steps,
        log=sample_log,
        events=sum(len(s.events) for s in steps),
        label_counts={**resolver.counts, **{f"learned_{k}": v for k, v in stage.learned.items()}},
        oracle=oracle,
        injected_at=shop.drift_points if shop is not None else [],
        label_config=config,
        topk=topk,
        shop=shop,
        tail=tail,
    )


def _topk_evaluation(
    options: QualityOptions, fmt: str | None, shop: Any, config: LabelConfig
) -> TopKEvaluation:
    """The top-K evaluation of the stream (:mod:`streams.bench.topk`): it judges events from
    the middle of the stream on, so a log's events are counted first (up to ``options.events``)."""
    start = time.perf_counter()
    if shop is not None:
        events = options.events if options.events is not None else shop.config.events
    else:
        from producers.replay import replay

        events = 0
        for record in replay(options.source, fmt):
            if isinstance(record, Event):
                events += 1
                if events == options.events:
                    break
    evaluation = TopKEvaluation(
        from_event=events // 2,
        half_life_s=HALF_LIFE_S.get(fmt or "sim", DEFAULT_HALF_LIFE_S),
        shop=shop,
        seed=options.seed,
        catalog_items=config.max_catalog_items,
    )
    evaluation.seconds += time.perf_counter() - start
    return evaluation


def _log_format(options: QualityOptions) -> str:
    from producers.replay import guess_format

    return options.format or guess_format(options.source)


def _open_source(
    options: QualityOptions, fmt: str | None, horizon_ms: int
) -> tuple[Iterable[Event | CatalogItem], Any, set[int]]:
    """The records, the shop (simulator only) and the event indexes where it drifts.

    The simulated shop is asked for enough events beyond ``options.events``
    to cover ``horizon_ms`` more event time (an upper bound: at most
    ``slate_size`` impressions and three funnel events per shown item per
    session); its new items are scaled with the total so the first
    ``options.events`` events see the default arrival rate.
    """
    if options.source != "sim":
        from producers.replay import replay

        return replay(options.source, fmt), None, set()
    from producers.simulator import Drift, Shop, ShopConfig

    events = options.events or ShopConfig().events
    drifts = (Drift(int(options.drift_at * events), "taste_shift"),) if options.drift else ()
    default = ShopConfig()
    per_second = default.sessions_per_second * default.slate_size[1] * 4
    total = events + math.ceil(per_second * horizon_ms / 1000)
    shop = Shop(
        ShopConfig(
            seed=options.seed,
            events=total,
            new_items=round(default.new_items * total / default.events),
            impressions=options.impressions,
            drifts=drifts,
            shop=options.shop,
        )
    )
    return shop.records(), shop, {d.at_event for d in drifts}


def _drain(
    events: Iterator[tuple[int, Event]], resolver: LabelResolver, log: SampleLog, until_ms: int
) -> list[Event]:
    """Make every logged sample's labels final: read on until ``until_ms``, then close the rest.

    Labels come from events up to ``until_ms`` (the end of every window); if
    the source ends sooner, the windows it cut short are closed there: a
    conversion after the end of a log is unknowable and counts as none.
    Returns the events read (what item demand of the last hour is judged by).
    """
    logged = len(log)
    index = -1
    tail = []
    for index, event in events:
        if event.ts > until_ms:
            break
        tail.append(event)
        resolved = resolver.observe(event).resolved
        log.labelled([s for s in resolved if s.key < logged], index)
    log.labelled([s for s in resolver.flush() if s.key < logged], index)
    return tail


def _numbered(
    records: Iterable[Event | CatalogItem],
    resolver: LabelResolver,
    on_catalog: Callable[[CatalogItem], None] | None = None,
) -> Iterator[tuple[int, Event]]:
    """Events with their stream index; catalog records go to the resolver (and
    ``on_catalog``) on the way."""
    index = 0
    for record in records:
        if isinstance(record, CatalogItem):
            resolver.observe_catalog(record)
            if on_catalog is not None:
                on_catalog(record)
            continue
        yield index, record
        index += 1


def _truth(shop: Any, samples: list[TrackedSample]) -> np.ndarray:
    """Entire-space true probabilities of samples, as the shop is now."""
    if not samples:
        return np.zeros((0, 3))
    devices = [s.device for s in samples]
    rows = shop.truth_many(
        [s.user_id for s in samples],
        [s.item_id for s in samples],
        None if None in devices else devices,
    )
    return np.cumprod(rows, axis=1)


# ------------------------------------------------------------------ demand


class DemandBench:
    """``mtl``'s item demand over the stream (:mod:`online_models.demand`), and its report.

    The forecaster sees each step's catalog records and events after the
    model's step, as the worker's pipeline feeds it. Its forecasts are
    judged once their horizon has passed, against what sold in it; the
    report covers the points made from the middle of the stream on (as the
    funnel metrics do), so the first hour's untrained head and empty counts
    are not what is measured. Baselines over the same points: the all-zero
    forecast (floored at :data:`~online_models.demand.DEVIANCE_FLOOR`), the
    item's decayed purchase rate times the horizon, and for items less than
    a horizon old the mean of that over items of their category.
    """

    def __init__(self, model: Learner, horizon_s: float) -> None:
        self.forecaster = DemandForecaster(model, DemandConfig(horizon_s=horizon_s))
        self.parts: list[Resolved] = []
        self.seconds = 0.0

    def step(self, _model: Learner, step: Step) -> None:
        start = time.process_time()
        for item in step.catalog:
            self.forecaster.observe_catalog(
                item.item_id, item.category, item.brand, item.price, item.ts
            )
        self.parts.append(self.forecaster.observe(step.events).resolved)
        self.seconds += time.process_time() - start

    def finish(self, tail: list[Event]) -> None:
        """Read the events after the stream (:func:`_drain`'s), to resolve its last points."""
        start = time.process_time()
        for chunk in range(0, len(tail), 1_000):
            self.parts.append(self.forecaster.observe(tail[chunk : chunk + 1_000]).resolved)
        self.seconds += time.process_time() - start

    def report(self, from_position: int, end: int) -> dict[str, Any]:
        """Deviances, totals and baselines of the points made from ``from_position`` up to
        ``end`` (the points made in the tail are not the stream's)."""
        every = Resolved.concat(self.parts)
        late = (every.position >= from_position) & (every.position < end)
        actual, forecast = every.actual[late], every.forecast[late]
        young = every.young[late]
        purchases, bought = forecast[:, 0], actual[:, 0]
        decayed, category = every.decayed_rate[late], every.category_mean[late]
        return {
            "horizon_s": self.forecaster.config.horizon_s,
            "forecasts": int(late.sum()),
            "deviance": poisson_deviance(bought, purchases),
            "zero_deviance": poisson_deviance(bought, np.zeros_like(bought)),
            "decayed_rate_deviance": poisson_deviance(bought, decayed),
            "total_ratio": float(purchases.sum() / max(bought.sum(), 1e-9)),
            "forecast_total": float(purchases.sum()),
            "actual_total": float(bought.sum()),
            "carts": {
                "deviance": poisson_deviance(actual[:, 1], forecast[:, 1]),
                "zero_deviance": poisson_deviance(actual[:, 1], np.zeros(len(actual))),
                "total_ratio": float(forecast[:, 1].sum() / max(actual[:, 1].sum(), 1e-9)),
            },
            "new_items": {
                "forecasts": int(young.sum()),
                "deviance": poisson_deviance(bought[young], purchases[young]),
                "category_mean_deviance": poisson_deviance(bought[young], category[young]),
                "decayed_rate_deviance": poisson_deviance(bought[young], decayed[young]),
                "total_ratio": float(purchases[young].sum() / max(bought[young].sum(), 1e-9)),
            },
            "seconds": self.seconds,
        }


# ------------------------------------------------------------------ the models


@dataclass
class ModelRun:
    """A model's scores (one row per sample key), its own CPU time (remember, predict, learn)
    and the labels it learned per task."""

    scores: np.ndarray
    seconds: float
    learned: int
    labels_learned: dict[str, int]


def run_model(
    model: Learner,
    stream: SampleStream,
    quality: LiveQuality | None = None,
    features: FeatureDriftMonitor | None = None,
    advance: Callable[[float], None] | None = None,
    before_step: Callable[[Learner, Step], None] | None = None,
    after_step: Callable[[Learner, Step], None] | None = None,
) -> ModelRun:
    """Test-then-train over the stream; feed the live quality (and its drift detectors) and the
    feature drift monitor as the worker does, if given; ``before_step(model, step)`` is called
    before each step is scored and learned, ``after_step`` after (both outside the model's
    timed work)."""
    scores = np.full((len(stream.log), 3), np.nan)
    seconds = 0.0
    learned = 0
    per_task = np.zeros(len(TASKS), dtype=np.int64)
    for step in stream.steps:
        if before_step is not None:
            before_step(model, step)
        scored_by = model.model_version
        start = time.process_time()
        predictions = score_then_learn(model, step.new, step.learn)
        seconds += time.process_time() - start
        if step.new:
            scores[[s.key for s in step.new]] = predictions
        learned += len(step.learn)
        if step.learn:
            per_task += np.count_nonzero(~np.isnan(label_matrix(step.learn)), axis=0)
        if features is not None:
            features.observe(step.events)
        if quality is not None:
            if step.new:
                quality.scored(step.new, predictions, scored_by)
            if step.resolved and quality.labelled(step.resolved, step.position) and features:
                features.rebase()
        if after_step is not None:
            after_step(model, step)
        if advance is not None:
            advance(len(step.events))
    labels_learned = dict(zip(TASKS, per_task.tolist(), strict=True))
    return ModelRun(scores=scores, seconds=seconds, learned=learned, labels_learned=labels_learned)


def run(options: QualityOptions) -> dict[str, Any]:
    """Build the stream, run every model, write the report (and plot); return the report."""
    factories = _model_factories()
    stream = build_stream(options)
    gc.freeze()  # the stream lives to the end: keep the collector from rescanning it per model
    from_position = stream.events // 2
    quality = LiveQuality(drift=ConceptDriftMonitor())  # the worker's window and warm-up
    features = FeatureDriftMonitor(history_windows=stream.events)  # every window, for the plot
    report: dict[str, Any] = {
        "source": options.source,
        "events": stream.events,
        "impressions": stream.label_config.impressions,
        "windows": _windows(stream.label_config),
        "samples": {"scored": len(stream.log), **stream.label_counts},
        "models": {},
    }
    if options.init_from is not None:
        report["init_from"] = str(options.init_from)
    runs: dict[str, np.ndarray] = {}
    value = ValueEvaluation(from_position, stream.topk, stream.shop)
    demand: DemandBench | None = None
    for name in options.models:
        model = factories[name]()
        if name == "mtl" and options.init_from is not None:
            start_from(model, options.init_from)
        monitors = (quality, features) if name == "mtl" else (None, None)
        hooks = [value.before_step] if name == "mtl" else []
        if stream.topk is not None and name == "mtl":
            hooks.append(stream.topk.serve)
        if name == "mtl" and options.demand_horizon_s:
            demand = DemandBench(model, options.demand_horizon_s)
        forecast = demand.step if demand is not None and name == "mtl" else None
        with optional_progress(options.progress, name, stream.events) as advance:
            result = run_model(model, stream, *monitors, advance, _each(hooks), forecast)
        metrics = prequential_metrics(result.scores, stream.log, from_position)
        metrics["learn_events_per_s"] = result.learned / max(result.seconds, 1e-9)
        metrics["labels_learned"] = result.labels_learned
        report["models"][name] = metrics
        runs[name] = result.scores
    if "mtl" in runs:
        report["comparisons"] = {
            f"mtl-{name}": paired_comparison(runs["mtl"], scores, stream.log, from_position)
            for name, scores in runs.items()
            if name != "mtl"
        }
    if stream.oracle is not None:
        report["oracle"] = prequential_metrics(stream.oracle, stream.log, from_position)
        runs["oracle"] = stream.oracle
    report["drift"] = {
        "injected_at": stream.injected_at,
        "detections": quality.drift.detections if "mtl" in options.models else [],
        "psi": {"windows": list(features.history), "window_events": features.window_events},
        "calibration": _calibration(quality) if "mtl" in options.models else {},
    }
    report["live"] = _live(quality) if "mtl" in options.models else {}
    report["leak_auc"] = leak_auc(stream.log, from_position)
    if demand is not None:
        demand.finish(stream.tail)
        report["demand"] = demand.report(from_position, stream.events)
    if stream.topk is not None:
        report["topk"] = stream.topk.report()
    if "mtl" in options.models:
        report["value"] = value.report()
    report = _finite(report)
    if options.report is not None:
        options.report.write_text(json.dumps(report, indent=2) + "\n")
    if options.plot is not None:
        plot_rolling_auc(runs, stream, report["drift"], options.plot)
    if options.progress and "topk" in report:
        from streams.progress import stderr

        print_summary(
            report["topk"],
            lambda text: stderr.print(text, markup=False, highlight=False, soft_wrap=True),
        )
    return report


def _each(
    hooks: list[Callable[[Learner, Step], None]],
) -> Callable[[Learner, Step], None] | None:
    """One ``before_step`` hook calling each of ``hooks`` in turn (``None`` if there are none)."""
    if not hooks:
        return None

    def call(model: Learner, step: Step) -> None:
        for hook in hooks:
            hook(model, step)

    return call


def start_from(model: Learner, checkpoint: Path) -> None:
    """Start ``model`` (mtl) from the shared layers and content rows of the learner in a
    worker's ``checkpoint`` (:func:`online_models.transfer.init_from`); a ValueError if the
    file cannot be read or its learner does not fit."""
    from online_models.transfer import init_from
    from streams.checkpoint import CheckpointError, learner_state_of

    try:
        state = learner_state_of(checkpoint)
    except CheckpointError as err:
        raise ValueError(f"--init-from: {err}") from err
    init_from(model, state)


def _windows(config: LabelConfig) -> dict[str, Any]:
    """The label windows of the stream, in seconds of event time."""
    waits = config.provisional_waits_ms
    return {
        "click_window_s": config.click_window_ms / 1000,
        "conversion_window_s": config.conversion_window_ms / 1000,
        "provisional_waits_s": None if waits is None else [wait / 1000 for wait in waits],
    }


def _live(quality: LiveQuality) -> dict[str, dict[str, Any]]:
    """Per task, mtl's live figures over the worker's window, as a running worker shows them."""
    keys = ("auc", "logloss", "labels", "positives")
    return {task: {key: values[key] for key in keys} for task, values in quality.summary().items()}


def _calibration(quality: LiveQuality) -> dict[str, dict[str, float]]:
    """Per task, mtl's mean prediction and the observed rate over its last
    :data:`CALIBRATION_LABELS` labels (the end of the live window)."""
    out = {}
    for task, pairs in quality.state_dict()["pairs"].items():
        last = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)[-CALIBRATION_LABELS:]
        empty = len(last) == 0
        out[task] = {
            "mean_prediction": float("nan") if empty else float(last[:, 0].mean()),
            "observed_rate": float("nan") if empty else float(last[:, 1].mean()),
            "labels": len(last),
        }
    return out


def _finite(value: Any) -> Any:
    """The report with NaN (an AUC without both classes) as ``null``: strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def plot_rolling_auc(
    runs: dict[str, np.ndarray], stream: SampleStream, drift: dict[str, Any], path: Path
) -> None:
    """One panel per task: rolling AUC of each model along the stream, drifts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(TASKS), 1, figsize=(11, 9), sharex=True)
    for task, (axis, name) in enumerate(zip(axes, TASKS, strict=True)):
        labelled = int((~np.isnan(stream.log.labels[: len(stream.log), task])).sum())
        window = max(2_000, labelled // 25)
        for model, scores in runs.items():
            positions, values = rolling_auc(scores, stream.log, task, window)
            style = "--" if model == "oracle" else "-"
            axis.plot(positions, values, style, label=model, linewidth=1.2)
        for at in drift["injected_at"]:
            axis.axvline(at, color="red", linestyle="--", linewidth=1)
        for detection in drift["detections"]:
            axis.axvline(detection["event"], color="black", linestyle=":", linewidth=1)
        axis.set_ylabel(f"{name} AUC\n(last {window:,} labels)")
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower right", ncol=3, fontsize=8)
    axes[0].set_title("Prequential rolling AUC (red dashed: injected drift, dotted: detected)")
    axes[-1].set_xlabel("event index")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
