"""``recstream bench handover``: a worker dies, a worker joins, the stream flows on.

On one fresh embedded broker and topic prefix, two ``recstream worker``
processes (each its own metrics port, checkpoint directory and
``--predictions-log``; the demo's label windows and model flags) split the
``events`` partitions. The demo's stream (``demo_stream(--events, --seed)``,
impressions on) is then produced live at ``--rate`` events/s by a
:class:`~streams.bench.fault_kit.Feeder` (catalog first). The bench scrapes
every live worker's ``/metrics`` every 0.25 s and acts on the count of
events produced:

* at ``--kill-at`` it SIGKILLs worker 1 (the *dead* worker; the partitions
  it owned are those of its last scrape's lag series);
* at ``--join-at`` it starts worker 3, the *joiner* (worker 1 is not
  restarted): the group rebalances and the joiner, per the product, takes
  the latest model from ``sync`` before taking partitions on.

When the feeder is done, the live workers own every partition, no partition
lags and their applied counts have stood still for 3 s, it stops them with
SIGTERM, reads the ``scores`` topic and the predictions logs.

What a run records (``--report``):

``failover.takeover_s``
    Seconds from the SIGKILL to the first scrape at which worker 2 (the
    *survivor*) owns all partitions.
``failover.first_score_s``
    Seconds from the SIGKILL to the first record on ``scores`` (its ``ts``,
    wall-clock ms) for a user whose events go to a partition the dead worker
    owned. ``scores`` is compacted: if the broker compacted it, this is an
    upper bound.
``failover.caught_up_s``
    Seconds from the SIGKILL to the first scrape at which the survivor owns
    all partitions and lags on them by at most one second of the stream
    (``--rate`` messages; events keep arriving, so the lag is rarely 0).
``join.owned``
    Partitions per live worker (survivor, joiner) at the first scrape at
    which both own some and together all.
``join.assigned_s``, ``join.first_applied_s``
    Seconds from the joiner's start to its first scrape owning partitions,
    and to the first later scrape at which its applied count rose above the
    one that scrape showed (it continues the counters of the group's model
    snapshot it starts from, so a rise before it owns partitions is not
    applying).
``join.model_version_at_start``, ``join.others_version_at_start``
    The joiner's ``recstream_model_version`` at its first scrape owning
    partitions, and the survivor's at the same scrape.
``join.window``
    The joiner's first events, in event time (:func:`join_window`): from
    the first sample in the joiner's predictions log to the event time of
    the ``--join-events``-th (10,000th) event produced to the partitions it
    owns from then on, both ends included.
``join.tasks.<task>``
    Over the samples in that window, per task: the joiner's AUC on its
    samples (``joiner_auc``), the survivor's on its own (``others_auc``),
    each with its DeLong standard error (``joiner_se``, ``others_se``),
    ``ratio`` joiner/others, ``difference`` joiner - others with
    ``difference_se`` = ``sqrt(joiner_se**2 + others_se**2)`` (different
    samples), and ``samples`` of each.
``events``
    Events produced (acknowledged), and the applied counts per worker at
    the end (the dead worker's from its last scrape). Not a sum to check:
    the joiner continues the counters of the model snapshot it starts from,
    and events may be applied again after a takeover.
``timeline``
    Per scrape: seconds since the stream started and each worker's applied
    count (None when it was not running); ``--plot`` draws it.

Example
-------
>>> report = run(HandoverOptions(events=20_000, kill_at=5_000, join_at=10_000,
...                              join_events=1_000))                  # doctest: +SKIP
>>> report["failover"]["takeover_s"] < 20                             # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from online_models.base import TASKS
from online_models.evaluation import auc, auc_standard_error
from streams.bench.fault_audit import TopicMessage
from streams.bench.fault_kit import Feeder, Outbound, WorkerProcess, applied_count, read_topic
from streams.bench.scale import SCRAPE_EVERY_S, settled, stop_all
from streams.bench.throughput import demo_stream
from streams.broker import EmbeddedBroker
from streams.demo import DemoOptions, worker_flags
from streams.pipeline import RawMessage
from streams.prediction_log import of_task, read
from streams.progress import stderr
from streams.settings import Settings, TopicNames
from streams.topics import ensure_topics

QUIET_S = 3.0
"""Applied counts standing still this long (and nothing lagging): every event is applied."""
DEAD, SURVIVOR, JOINER = 0, 1, 2
"""Indexes of the three workers."""


@dataclass(frozen=True)
class HandoverOptions:
    """How much stream, how fast, when to kill and join, where the figures go."""

    events: int = 120_000
    seed: int = 7
    rate: float = 2_000.0
    kill_at: int = 30_000  # events produced when worker 1 is SIGKILLed
    join_at: int = 60_000  # events produced when worker 3 starts
    join_events: int = 10_000  # the joiner's events in the compared window
    timeout_s: float = 900.0  # from the stream's start to every event applied
    report: Path | None = None
    plot: Path | None = None
    workdir: Path | None = None  # keep the workers' logs, checkpoints and predictions here
    settings: Settings = field(default_factory=Settings)  # model flags and the broker binary


@dataclass
class Observed:
    """What the scrapes saw: the timeline and the moments of the run (monotonic seconds)."""

    started: float
    at: list[float] = field(default_factory=list)
    applied: list[list[float | None]] = field(default_factory=list)
    last: list[dict[str, float]] = field(default_factory=lambda: [{}, {}, {}])
    killed: float | None = None
    killed_wall_ms: int = 0
    killed_after: int = 0
    dead_partitions: list[int] = field(default_factory=list)
    join_partitions: list[int] = field(default_factory=list)  # the joiner's, once settled
    took_over: float | None = None
    caught_up: float | None = None
    joined: float | None = None
    joined_after: int = 0
    join_assigned: float | None = None
    join_versions: tuple[float, float] | None = None
    owned: list[int] | None = None
    quiet_since: float = 0.0

    def record(self, now: float, metrics: Sequence[dict[str, float] | None]) -> None:
        """One scrape of the three workers (None: not running)."""
        self.at.append(now)
        self.applied.append([applied_count(m) if m else None for m in metrics])
        for i, scraped in enumerate(metrics):
            if scraped:
                self.last[i] = scraped


def run(options: HandoverOptions) -> dict[str, Any]:
    """Kill one of two workers, start a third; return (and write, if asked) the report."""
    catalog, stream = demo_stream(options.events, options.seed)
    with tempfile.TemporaryDirectory(prefix="recstream-handover-") as tmp:
        root = options.workdir or Path(tmp)
        report = _run(catalog, stream, root, options)
    if options.report:
        options.report.write_text(json.dumps(report, indent=2) + "\n")
    if options.plot:
        plot(report, options.plot)
    return report


def _run(
    catalog: list[RawMessage], stream: list[RawMessage], root: Path, options: HandoverOptions
) -> dict[str, Any]:
    settings = options.settings
    partitions = settings.partitions
    topics = TopicNames(f"handover-{time.time_ns()}.")
    flags = worker_flags(settings, DemoOptions())
    logs = [root / f"predictions-{i + 1}.bin" for i in range(3)]
    with EmbeddedBroker(binary=settings.tansu_bin) as broker:
        ensure_topics(broker.bootstrap, topics, partitions)
        workers = [
            WorkerProcess(
                broker.bootstrap,
                topics,
                root / f"w{i + 1}",
                *flags,
                "--predictions-log",
                str(logs[i]),
                ledger=False,
            )
            for i in range(3)
        ]
        try:
            _start_pair(workers[:JOINER], partitions)
            feeder = Feeder(broker.bootstrap, topics, outbound(catalog, stream), options.rate)
            observed = _watch(workers, feeder.start(), partitions, options)
        finally:
            stop_all(workers)
        scores = read_topic(broker.bootstrap, topics.scores)
    survivor, joiner = read(logs[SURVIVOR]), read(logs[JOINER])  # the dead one's may be empty
    return build_report(observed, feeder.acked, scores, survivor, joiner, options)


def outbound(catalog: Sequence[RawMessage], stream: Sequence[RawMessage]) -> Iterator[Outbound]:
    """The demo's wire messages as a feeder's records: the catalog, then the events.

    >>> [r.kind for r in outbound([RawMessage(0, 0, b"i1", b"{}")],
    ...                           [RawMessage(0, 0, b"u1", b"{}")])]
    ['catalog', 'event']
    """
    for message in catalog:
        yield Outbound("catalog", message.key or b"", message.value or b"")
    for message in stream:
        yield Outbound("event", message.key or b"", message.value or b"")


def _start_pair(workers: Sequence[WorkerProcess], partitions: int) -> None:
    """Launch both and wait until they have split the partitions."""
    with stderr.status("two workers joining the group..."):
        for worker in workers:
            worker.launch()
        for worker in workers:
            worker.wait_for(lambda m: m.get("recstream_assigned_partitions", 0) > 0, 300, "start")
        deadline = time.monotonic() + 120
        while not settled([w.metrics() for w in workers], partitions):
            if time.monotonic() > deadline:
                raise RuntimeError("the two workers did not split the partitions in 120 s")
            time.sleep(SCRAPE_EVERY_S)


def _watch(
    workers: list[WorkerProcess], feeder: Feeder, partitions: int, options: HandoverOptions
) -> Observed:
    """Scrape the live workers, kill and join on schedule, until every event is applied."""
    observed = Observed(started=time.monotonic())
    deadline = observed.started + options.timeout_s
    with stderr.status("stream starting...") as status:
        while time.monotonic() < deadline:
            _check_alive(workers, observed)
            metrics = [w.metrics() if w.alive() else None for w in workers]
            now = time.monotonic()
            observed.record(now, metrics)
            if observed.killed is None and feeder.sent >= options.kill_at:
                _kill(workers[DEAD], metrics[DEAD] or {}, feeder.sent, observed)
            elif _join_due(observed, feeder.sent, options.join_at):
                workers[JOINER].launch()
                observed.joined, observed.joined_after = time.monotonic(), feeder.sent
            _note_failover(metrics[SURVIVOR], partitions, options.rate, now, observed)
            _note_join(metrics[SURVIVOR], metrics[JOINER], partitions, now, observed)
            status.update(progress_line(observed, feeder.sent, options.events, now))
            if feeder.done and _finished(observed, metrics, partitions, now):
                return observed
            time.sleep(SCRAPE_EVERY_S)
    raise RuntimeError(f"the workers did not apply {options.events:,} events in time")


def _join_due(observed: Observed, sent: int, join_at: int) -> bool:
    """After the kill, once ``join_at`` events are produced, if the joiner has not started."""
    return observed.killed is not None and observed.joined is None and sent >= join_at


def _check_alive(workers: Sequence[WorkerProcess], observed: Observed) -> None:
    """Raise (with its log's tail) if a worker the bench did not kill has exited."""
    for i, worker in enumerate(workers):
        expected = i != DEAD or observed.killed is None
        if expected and worker.process is not None and not worker.alive():
            raise RuntimeError(f"worker {i + 1} exited: {worker.tail()}")


def _kill(worker: WorkerProcess, metrics: dict[str, float], sent: int, observed: Observed) -> None:
    observed.dead_partitions = lag_partitions(metrics)
    observed.killed_wall_ms = int(time.time() * 1000)
    observed.killed = time.monotonic()
    worker.kill()
    observed.killed_after = sent


def _note_failover(
    survivor: dict[str, float] | None,
    partitions: int,
    rate: float,
    now: float,
    observed: Observed,
) -> None:
    """The first scrape after the kill at which the survivor owns all partitions, and the
    first at which it also lags on each by at most one second of the stream in all."""
    if observed.killed is None or not survivor or observed.joined is not None:
        return
    if survivor.get("recstream_assigned_partitions", 0) == partitions:
        observed.took_over = observed.took_over or now
        known = len(lag_partitions(survivor)) == partitions
        if observed.caught_up is None and known and lag(survivor) <= rate:
            observed.caught_up = now


def _note_join(
    survivor: dict[str, float] | None,
    joiner: dict[str, float] | None,
    partitions: int,
    now: float,
    observed: Observed,
) -> None:
    """The moment and versions of the joiner's first scrape owning partitions; the split once
    settled."""
    if not survivor or not joiner or joiner.get("recstream_assigned_partitions", 0) == 0:
        return
    if observed.join_versions is None:
        observed.join_assigned = now
        observed.join_versions = (
            joiner.get("recstream_model_version", 0.0),
            survivor.get("recstream_model_version", 0.0),
        )
    if observed.owned is None and settled([survivor, joiner], partitions):
        observed.owned = [int(m["recstream_assigned_partitions"]) for m in (survivor, joiner)]
    if observed.owned is not None and not observed.join_partitions:  # its lag series come later
        observed.join_partitions = lag_partitions(joiner)


def _finished(
    observed: Observed, metrics: Sequence[dict[str, float] | None], partitions: int, now: float
) -> bool:
    """The live workers own all partitions, none lags, and their counts stood still."""
    live = [m for m in metrics if m]
    series = sum(1 for m in live for k in m if k.startswith("recstream_consumer_lag{"))
    calm = settled(live, partitions) and series == partitions and sum(map(lag, live)) == 0
    moved = len(observed.applied) < 2 or observed.applied[-1] != observed.applied[-2]
    if moved or not calm:
        observed.quiet_since = now
    return observed.joined is not None and now - observed.quiet_since >= QUIET_S


def lag(metrics: dict[str, float]) -> float:
    """Messages waiting on all of a worker's partitions.

    >>> lag({"recstream_consumer_lag{partition=0}": 3.0, "recstream_consumer_lag{partition=2}": 1.0,
    ...      "recstream_assigned_partitions": 2.0})
    4.0
    """
    return sum(v for k, v in metrics.items() if k.startswith("recstream_consumer_lag{"))


def lag_partitions(metrics: dict[str, float]) -> list[int]:
    """The partitions a worker reports lag for: the ones it owns.

    >>> lag_partitions({"recstream_consumer_lag{partition=2}": 0.0, "up": 1.0})
    [2]
    """
    prefix = "recstream_consumer_lag{partition="
    return sorted(int(k[len(prefix) : -1]) for k in metrics if k.startswith(prefix))


def progress_line(observed: Observed, sent: int, events: int, now: float) -> str:
    """The live status: time, produced, applied per worker, partitions per worker."""
    applied = "/".join("-" if a is None else f"{a:,.0f}" for a in observed.applied[-1])
    owned = "/".join(
        f"{m.get('recstream_assigned_partitions', 0):.0f}" if a is not None else "-"
        for m, a in zip(observed.last, observed.applied[-1], strict=True)
    )
    return (
        f"{now - observed.started:,.0f} s: {sent:,} of {events:,} produced, "
        f"applied {applied}, partitions {owned}"
    )


def build_report(
    observed: Observed,
    acked: Sequence[TopicMessage],
    scores: Sequence[TopicMessage],
    survivor: np.ndarray,
    joiner: np.ndarray,
    options: HandoverOptions,
) -> dict[str, Any]:
    """The run's figures from its scrapes, the events and scores on the broker and the
    survivor's and joiner's predictions logs (see the module docstring)."""
    assert observed.killed is not None and observed.joined is not None
    window = join_window(joiner, acked, observed.join_partitions, options.join_events)
    first_score = first_score_ms(scores, user_partitions(acked), observed)
    applying = first_rise(
        observed.at, [row[JOINER] for row in observed.applied], observed.join_assigned
    )
    return {
        "events": {
            "produced": len(acked),
            "applied_by_worker": [None if not m else applied_count(m) for m in observed.last],
        },
        "rate": options.rate,
        "failover": {
            "killed_after_events": observed.killed_after,
            "killed_at_ms": observed.killed_wall_ms,
            "dead_partitions": observed.dead_partitions,
            "takeover_s": _since(observed.took_over, observed.killed),
            "caught_up_s": _since(observed.caught_up, observed.killed),
            "first_score_s": (
                None
                if first_score is None
                else round((first_score - observed.killed_wall_ms) / 1000, 2)
            ),
        },
        "join": {
            "started_after_events": observed.joined_after,
            "owned": observed.owned,
            "assigned_s": _since(observed.join_assigned, observed.joined),
            "first_applied_s": _since(applying, observed.joined),
            "model_version_at_start": _version(observed, 0),
            "others_version_at_start": _version(observed, 1),
            "window": None if window is None else list(window),
            "tasks": join_figures(joiner, survivor, window),
        },
        "timeline": {
            "s": [round(t - observed.started, 2) for t in observed.at],
            "applied": [list(column) for column in zip(*observed.applied, strict=True)],
            "killed_s": round(observed.killed - observed.started, 2),
            "joined_s": round(observed.joined - observed.started, 2),
        },
    }


def _since(moment: float | None, start: float) -> float | None:
    return None if moment is None else round(moment - start, 2)


def first_rise(
    at: Sequence[float], values: Sequence[float | None], since: float | None
) -> float | None:
    """The time of the first value above the one at ``since`` (None: it never rose, or no
    ``since``).

    >>> first_rise([1.0, 2.0, 3.0, 4.0, 5.0], [None, 0.0, 5.0, 5.0, 7.0], since=3.0)
    5.0
    """
    if since is None:
        return None
    seen = [(t, v) for t, v in zip(at, values, strict=True) if v is not None and t >= since]
    return next((t for t, v in seen if v > seen[0][1]), None) if seen else None


def _version(observed: Observed, which: int) -> float | None:
    return None if observed.join_versions is None else observed.join_versions[which]


def user_partitions(acked: Sequence[TopicMessage]) -> dict[str, int]:
    """Each user's ``events`` partition, from the acknowledged events.

    >>> user_partitions([TopicMessage(3, 0, b'{"user_id": "u1"}')])
    {'u1': 3}
    """
    return {json.loads(m.value)["user_id"]: m.partition for m in acked}


def first_score_ms(
    scores: Sequence[TopicMessage], partitions: dict[str, int], observed: Observed
) -> int | None:
    """The earliest ``ts`` after the kill of a score record for a dead partition's user."""
    dead = set(observed.dead_partitions)
    after = [
        record["ts"]
        for record in (json.loads(m.value) for m in scores if m.value)
        if record["ts"] > observed.killed_wall_ms and partitions.get(record["user_id"]) in dead
    ]
    return min(after) if after else None


def join_window(
    joiner: np.ndarray, acked: Sequence[TopicMessage], partitions: Sequence[int], events: int
) -> tuple[int, int] | None:
    """The joiner's first ``events`` events in event time: from its first logged sample (any
    task) to the ``events``-th event at or after it in ``partitions`` (the joiner's; its last
    if fewer), both ends included; None when it logged nothing or owns no such event.

    >>> from streams.prediction_log import RECORD
    >>> rows = np.array([(9, 0, 1, .5), (3, 1, 0, .5)], RECORD)
    >>> acked = [TopicMessage(p, 0, b'{"ts": %d}' % t) for p, t in [(0, 2), (0, 4), (1, 5), (0, 8)]]
    >>> join_window(rows, acked, [0], 2)
    (3, 8)
    """
    if not len(joiner):
        return None
    start = int(joiner["ts"].min())
    owned = set(partitions)
    times = sorted(
        ts for m in acked if m.partition in owned and (ts := json.loads(m.value)["ts"]) >= start
    )
    if not times:
        return None
    return start, int(times[min(events, len(times)) - 1])


def join_figures(
    joiner: np.ndarray, others: np.ndarray, window: tuple[int, int] | None
) -> dict[str, dict[str, Any]]:
    """Per task, the joiner's AUC against the others' on their own samples in ``window``."""
    return {task: task_figures(joiner, others, window, task) for task in TASKS}


def task_figures(
    joiner: np.ndarray, others: np.ndarray, window: tuple[int, int] | None, task: str
) -> dict[str, Any]:
    """One task's AUCs, DeLong SEs, ratio and difference (with its SE) in ``window``.

    >>> from streams.prediction_log import RECORD
    >>> rows = np.array([(t, 0, t % 2, t % 2) for t in range(8)], RECORD)
    >>> figures = task_figures(rows, rows, (0, 7), "click")
    >>> figures["ratio"], figures["difference"], figures["samples"]
    (1.0, 0.0, {'joiner': 8, 'others': 8})
    """
    a, b = (_in_window(of_task(rows, task), window) for rows in (joiner, others))
    a_auc, b_auc = _auc(a), _auc(b)
    a_se, b_se = _se(a), _se(b)
    return {
        "joiner_auc": _rounded(a_auc),
        "others_auc": _rounded(b_auc),
        "joiner_se": _rounded(a_se),
        "others_se": _rounded(b_se),
        "ratio": _rounded(a_auc / b_auc) if b_auc else None,
        "difference": _rounded(a_auc - b_auc),
        "difference_se": _rounded(math.hypot(a_se, b_se)),
        "samples": {"joiner": len(a), "others": len(b)},
    }


def _in_window(rows: np.ndarray, window: tuple[int, int] | None) -> np.ndarray:
    if window is None:
        return rows[:0]
    return rows[(rows["ts"] >= window[0]) & (rows["ts"] <= window[1])]


def _auc(rows: np.ndarray) -> float:
    return auc(rows["prediction"], rows["label"]) if len(rows) else float("nan")


def _se(rows: np.ndarray) -> float:
    return auc_standard_error(rows["prediction"], rows["label"]) if len(rows) else float("nan")


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def _cell(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(report: dict[str, Any]) -> str:
    """The headline figures as a short text table."""
    failover, join = report["failover"], report["join"]
    lines = [
        f"failover: takeover {_cell(failover['takeover_s'], 1)} s, first score for the dead "
        f"worker's users {_cell(failover['first_score_s'], 1)} s, caught up "
        f"{_cell(failover['caught_up_s'], 1)} s after the SIGKILL "
        f"(at {failover['killed_after_events']:,} events)",
        f"join: at {join['started_after_events']:,} events; partitions after "
        f"{_cell(join['assigned_s'], 1)} s, applying after {_cell(join['first_applied_s'], 1)} s, "
        f"split {join['owned']}, model version {_cell(join['model_version_at_start'], 0)} "
        f"(survivor {_cell(join['others_version_at_start'], 0)})",
        f"{'task':<9} {'joiner AUC':>16} {'others AUC':>16} {'ratio':>6} "
        f"{'difference':>16} {'samples':>14}",
    ]
    for task, row in join["tasks"].items():
        lines.append(
            f"{task:<9} {_pm(row['joiner_auc'], row['joiner_se']):>16} "
            f"{_pm(row['others_auc'], row['others_se']):>16} {_cell(row['ratio'], 3):>6} "
            f"{_pm(row['difference'], row['difference_se']):>16} "
            f"{_counts(row['samples']):>14}"
        )
    return "\n".join(lines)


def _counts(samples: dict[str, int]) -> str:
    return f"{samples['joiner']:,}/{samples['others']:,}"


def _pm(value: float | None, se: float | None) -> str:
    return f"{_cell(value, 3)} ± {_cell(se, 3)}"


def plot(report: dict[str, Any], path: Path) -> None:
    """Each worker's applied events against time, the kill and the join marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (name, applied) in enumerate(
        zip(
            ("worker 1 (killed)", "worker 2", "worker 3 (joins; counters from the snapshot)"),
            timeline["applied"],
            strict=True,
        )
    ):
        values = [np.nan if a is None else a for a in applied]
        ax.plot(timeline["s"], values, label=name, color=f"C{i}")
    ax.axvline(timeline["killed_s"], color="k", ls="--", lw=1)
    ax.axvline(timeline["joined_s"], color="k", ls=":", lw=1)
    ax.annotate("SIGKILL 1", (timeline["killed_s"], 0), rotation=90, va="bottom", ha="right")
    ax.annotate("start 3", (timeline["joined_s"], 0), rotation=90, va="bottom", ha="right")
    ax.set_xlabel("seconds since the stream started")
    ax.set_ylabel("events applied (per worker)")
    ax.legend()
    fig.suptitle(
        f"recstream bench handover: {report['events']['produced']:,} events "
        f"at {report['rate']:,.0f}/s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
