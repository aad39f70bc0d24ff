"""``recstream bench scale``: one stream, 1, 2, ... real workers in one consumer group.

For each worker count k (``--workers 1,2``) a fresh embedded broker gets
the demo's stream (``--events`` events of the simulated shop, impressions
on, as ``bench throughput --kafka`` puts it there) on a fresh topic prefix.
Then k ``recstream worker`` processes start at once (each its own metrics
port, checkpoint directory and ``--predictions-log``; the demo's label
windows and model flags) and the bench scrapes their ``/metrics`` until
together they have applied every event and no partition lags, then stops
them with SIGTERM.

What a run records (``runs`` in ``--report``):

``events_per_s``
    Events applied by all workers per second, from the first scrape at
    which the group has settled (every worker owns partitions, all
    partitions are owned) and events flow, to the scrape that saw them all
    applied. Start-up, the group join and the first rebalance are left out
    (``startup_s``: launch to settled group); ``events_per_s_from_first``
    is N over the time from the first applied event instead, join included.
``cpu_seconds_per_event``
    The workers' user plus system CPU (``/proc/<pid>/stat``) over the same
    window, per event applied in it; ``cpu_seconds_per_event_with_startup``
    is all their CPU from launch (imports, torch, joining) over N.
``reapplied``
    Events the workers' counters show beyond N: events applied twice, or
    applied again after a partition moved (0 when every event is in the
    model once).
``tasks.<task>.auc``
    Prequential AUC pooled over every worker's predictions log, on samples
    in the second half of the stream by event time (the first half is warm-up).
``sync_*``
    The model-sync metrics (``recstream_sync_*``) summed over workers, None
    where the workers do not expose them (workers that learn separate models).
``broker_rss_mb``
    VmRSS of the broker at the end (it keeps every message in memory).

Each count runs ``--rounds`` times (default 3), the counts in turn (1, 2,
1, 2, ...), each run with its ``round``; ``medians`` has, per count, the
median of each figure over the rounds, and ``speedup`` and ``cpu_ratio``:
the medians of its events/s and CPU per event over the first count's in the
same round. CPU per event on a shared 2-core machine varies by about 10%
from run to run; one round is not a result.

Example
-------
>>> report = run(ScaleOptions(workers=(1,), events=3_000))       # doctest: +SKIP
>>> report["runs"][0]["workers"]                                 # doctest: +SKIP
1
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from online_models.base import TASKS
from online_models.evaluation import auc
from streams.bench.fault_kit import WorkerProcess, applied_count
from streams.bench.kafka import fill, process_cpu_s
from streams.bench.throughput import demo_stream
from streams.broker import EmbeddedBroker
from streams.demo import DemoOptions, worker_flags
from streams.pipeline import RawMessage
from streams.prediction_log import of_task, read
from streams.progress import stderr
from streams.settings import Settings, TopicNames
from streams.topics import ensure_topics

SCRAPE_EVERY_S = 0.25


@dataclass(frozen=True)
class ScaleOptions:
    """Which worker counts, how much stream, where the figures go."""

    workers: tuple[int, ...] = (1, 2)
    events: int = 200_000
    rounds: int = 3  # each count this many times, in turn; the report has the medians
    seed: int = 7
    timeout_s: float = 900.0  # per worker count, from launch to every event applied
    report: Path | None = None
    plot: Path | None = None
    workdir: Path | None = None  # keep the workers' logs, checkpoints and predictions here
    settings: Settings = field(default_factory=Settings)  # model flags and the broker binary


@dataclass
class _Sample:
    """One scrape of every worker: time, applied, CPU seconds and their metrics."""

    at: float
    applied: float
    cpu_s: float
    metrics: list[dict[str, float]]


def run(options: ScaleOptions, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every worker count on its own broker, ``rounds`` times in turn (1, 2, 1, 2, ...:
    a machine that slows down meanwhile slows every count alike); return (and write, if
    asked) the report."""
    catalog, stream = demo_stream(options.events, options.seed)
    split_ts = median_ts(stream)
    log = log or (lambda text: stderr.print(text, markup=False, highlight=False, soft_wrap=True))
    runs = []
    log(header())
    with tempfile.TemporaryDirectory(prefix="recstream-scale-") as tmp:
        root = options.workdir or Path(tmp)
        for round_ in range(options.rounds):
            for k in options.workers:
                directory = root / f"round-{round_ + 1}" / f"workers-{k}"
                runs.append(
                    {"round": round_ + 1}
                    | _run_count(k, catalog, stream, split_ts, directory, options)
                )
                log(row(runs[-1]))
    report = {
        "events": options.events,
        "seed": options.seed,
        "rounds": options.rounds,
        "runs": runs,
        "medians": medians(runs),
    }
    if options.report:
        options.report.write_text(json.dumps(report, indent=2) + "\n")
    if options.plot:
        plot(report, options.plot)
    return report


def medians(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per worker count, the median of each figure over the rounds, and ``speedup`` and
    ``cpu_ratio``: the medians over rounds of events/s and CPU per event against the first
    count's in the same round.

    >>> runs = [{"round": r, "workers": k, "events_per_s": e, "cpu_seconds_per_event": c,
    ...          "tasks": {}} for r, k, e, c in [(1, 1, 10, 2.0), (1, 2, 15, 2.2),
    ...                                          (2, 1, 12, 2.0), (2, 2, 20, 2.4)]]
    >>> [(m["workers"], m["events_per_s"], m["speedup"], m["cpu_ratio"]) for m in medians(runs)]
    [(1, 11.0, 1.0, 1.0), (2, 17.5, 1.58, 1.15)]
    """
    first = {r["round"]: r for r in runs if r["workers"] == runs[0]["workers"]}

    def ratio(run: dict[str, Any], name: str) -> float | None:
        base = first[run["round"]][name]
        return None if run[name] is None or not base else run[name] / base

    out = []
    for k in dict.fromkeys(r["workers"] for r in runs):
        mine = [r for r in runs if r["workers"] == k]
        summary: dict[str, Any] = {"workers": k}
        for name in MEDIAN_FIGURES:
            summary[name] = _median([r.get(name) for r in mine])
        summary["tasks"] = {
            task: {"auc": _median([r["tasks"].get(task, {}).get("auc") for r in mine])}
            for task in TASKS
        }
        summary["speedup"] = _median([ratio(r, "events_per_s") for r in mine], 2)
        summary["cpu_ratio"] = _median([ratio(r, "cpu_seconds_per_event") for r in mine], 2)
        out.append(summary)
    return out


MEDIAN_FIGURES = (
    "events_per_s",
    "cpu_seconds_per_event",
    "sync_lag_p99_s",
    "sync_bytes_per_min",
    "broker_rss_mb",
)
"""The figures of a run that :func:`medians` summarises."""


def _median(values: Sequence[float | None], digits: int | None = None) -> float | None:
    known = [v for v in values if v is not None and not math.isnan(v)]
    if not known:
        return None
    value = float(np.median(known))
    return value if digits is None else round(value, digits)


def _run_count(
    k: int,
    catalog: list[RawMessage],
    stream: list[RawMessage],
    split_ts: int,
    directory: Path,
    options: ScaleOptions,
) -> dict[str, Any]:
    settings = options.settings
    topics = TopicNames(f"scale{k}-{time.time_ns()}.")
    flags = worker_flags(settings, DemoOptions())
    logs = [directory / f"predictions-{i + 1}.bin" for i in range(k)]
    with EmbeddedBroker(binary=settings.tansu_bin) as broker:
        ensure_topics(broker.bootstrap, topics, settings.partitions)
        with stderr.status(f"{k} worker(s): putting {len(stream):,} events on a fresh broker..."):
            fill(broker.bootstrap, topics, catalog, stream)
        workers = [
            WorkerProcess(
                broker.bootstrap,
                topics,
                directory / f"w{i + 1}",
                *flags,
                "--predictions-log",
                str(logs[i]),
                ledger=False,
            )
            for i in range(k)
        ]
        launched = time.monotonic()
        try:
            for worker in workers:
                worker.launch()
            samples = _watch(workers, len(stream), settings.partitions, launched, options)
            assert broker.pid is not None
            rss_mb = vm_rss_mb(Path(f"/proc/{broker.pid}/status").read_text())
        finally:
            stop_all(workers)
    figures = measure(samples, settings.partitions, len(stream), launched)
    rows = [read(path) for path in logs if path.exists()]
    return {
        "workers": k,
        **figures,
        "tasks": pooled_auc(rows, split_ts),
        **sync_figures(samples),
        "broker_rss_mb": round(rss_mb, 1),
    }


def _watch(
    workers: list[WorkerProcess],
    events: int,
    partitions: int,
    launched: float,
    options: ScaleOptions,
) -> list[_Sample]:
    """Scrape every worker until all events are applied and nothing lags; a live line on stderr."""
    samples: list[_Sample] = []
    deadline = launched + options.timeout_s
    with stderr.status(f"{len(workers)} worker(s) starting...") as status:
        while time.monotonic() < deadline:
            for i, worker in enumerate(workers):
                if not worker.alive():
                    raise RuntimeError(f"worker {i + 1} exited: {worker.tail()}")
            metrics = [worker.metrics() for worker in workers]
            if all(metrics):
                applied = sum(map(applied_count, metrics))
                cpu = sum(process_cpu_s(worker.pid or 0) for worker in workers)
                samples.append(_Sample(time.monotonic(), applied, cpu, metrics))
                owned = [m.get("recstream_assigned_partitions", 0) for m in metrics]
                elapsed = time.monotonic() - launched
                status.update(
                    f"{len(workers)} worker(s), {elapsed:,.0f} s: {applied:,.0f} of {events:,} "
                    f"applied, partitions owned {'/'.join(f'{n:.0f}' for n in owned)}"
                )
                if done(metrics, events, partitions):
                    return samples
            time.sleep(SCRAPE_EVERY_S)
    raise RuntimeError(f"{len(workers)} worker(s) did not apply {events:,} events in time")


def stop_all(workers: Sequence[WorkerProcess]) -> None:
    """SIGTERM to all at once (one at a time, the others would take over the partitions); a
    second one would cut a worker's shutdown short, and with it its predictions log."""
    running = [w.process for w in workers if w.alive() and w.process is not None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # it loses its buffered predictions
            process.kill()
            process.wait()


def settled(metrics: Sequence[dict[str, float]], partitions: int) -> bool:
    """Every worker owns partitions and together they own them all.

    >>> settled([{"recstream_assigned_partitions": 2}, {"recstream_assigned_partitions": 2}], 4)
    True
    >>> settled([{"recstream_assigned_partitions": 4}, {"recstream_assigned_partitions": 0}], 4)
    False
    """
    owned = [m.get("recstream_assigned_partitions", 0) for m in metrics]
    return min(owned) > 0 and sum(owned) == partitions


def done(metrics: Sequence[dict[str, float]], events: int, partitions: int) -> bool:
    """``events`` applied, the group settled and no partition lagging (the broker's high
    watermark can lag what is readable: never the lag alone)."""
    applied = sum(map(applied_count, metrics))
    lag = sum(v for m in metrics for k, v in m.items() if k.startswith("recstream_consumer_lag{"))
    return applied >= events and settled(metrics, partitions) and lag == 0


def measure(
    samples: Sequence[_Sample], partitions: int, events: int, launched: float
) -> dict[str, Any]:
    """Rates and CPU per event of a run from its scrapes (see the module docstring)."""
    end = samples[-1]
    first = next(i for i, s in enumerate(samples) if s.applied > 0)
    start_at = max(first - 1, 0)  # the scrape before the first applied event
    steady = next(i for i, s in enumerate(samples) if settled(s.metrics, partitions))
    begin_at = max(steady, start_at)
    if begin_at == len(samples) - 1:  # settled only at the end: time it from the first event
        begin_at = start_at
    begin = samples[begin_at]
    window_events = end.applied - begin.applied
    window_s = end.at - begin.at
    return {
        "events_per_s": round(window_events / window_s, 1) if window_s > 0 else None,
        "events_per_s_from_first": round(events / (end.at - samples[start_at].at), 1),
        "startup_s": round(begin.at - launched, 1),
        "wall_s": round(end.at - launched, 1),
        "cpu_seconds_per_event": (
            round((end.cpu_s - begin.cpu_s) / window_events, 7) if window_events > 0 else None
        ),
        "cpu_seconds_per_event_with_startup": round(end.cpu_s / events, 7),
        "applied": int(end.applied),
        "reapplied": int(end.applied - events),
        "measured_events": int(window_events),
        "partitions_per_worker": [
            int(m.get("recstream_assigned_partitions", 0)) for m in end.metrics
        ],
    }


def median_ts(stream: Sequence[RawMessage]) -> int:
    """The median event time of a stream of wire messages: where its second half starts."""
    return int(np.median([json.loads(message.value)["ts"] for message in stream]))


def pooled_auc(logs: Sequence[np.ndarray], split_ts: int) -> dict[str, dict[str, Any]]:
    """Per task, the AUC of every worker's predictions together, on samples from ``split_ts``.

    >>> from streams.prediction_log import RECORD
    >>> a = np.array([(1, 0, 1.0, 0.1), (5, 0, 1.0, 0.9), (6, 1, 0.0, 0.2)], dtype=RECORD)
    >>> b = np.array([(7, 0, 0.0, 0.2)], dtype=RECORD)
    >>> pooled_auc([a, b], split_ts=5)["click"]
    {'auc': 1.0, 'labels': 2, 'positives': 1}
    """
    rows = second_half(np.concatenate(logs) if logs else np.array([]), split_ts)
    out = {}
    for task in TASKS:
        mine = of_task(rows, task) if len(rows) else rows
        value = auc(mine["prediction"], mine["label"]) if len(mine) else float("nan")
        out[task] = {
            "auc": None if math.isnan(value) else round(value, 4),
            "labels": len(mine),
            "positives": int(np.count_nonzero(mine["label"] > 0.5)) if len(mine) else 0,
        }
    return out


def second_half(rows: np.ndarray, split_ts: int) -> np.ndarray:
    """The records of samples whose event time is ``split_ts`` or later."""
    return rows[rows["ts"] >= split_ts] if len(rows) else rows


def sync_figures(samples: Sequence[_Sample]) -> dict[str, Any]:
    """The model-sync figures of a run, summed over workers; None where nobody exposes them."""
    end = samples[-1].metrics
    minutes = (samples[-1].at - samples[0].at) / 60

    def total(name: str) -> float | None:
        found = [m[name] for m in end if name in m]
        return sum(found) if found else None

    sent_bytes = total("recstream_sync_bytes_sent_total")
    return {
        "sync_deltas_sent": total("recstream_sync_deltas_sent_total"),
        "sync_deltas_applied": total("recstream_sync_deltas_applied_total"),
        "sync_lag_p99_s": histogram_quantile(0.99, buckets(end, "recstream_sync_lag_seconds")),
        "sync_bytes_per_min": (
            round(sent_bytes / minutes, 1) if sent_bytes is not None and minutes > 0 else None
        ),
    }


def buckets(metrics: Sequence[dict[str, float]], name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts by upper bound, summed over scrapes (workers).

    >>> buckets([{"h_bucket{le=0.5}": 1.0, "h_bucket{le=+Inf}": 2.0},
    ...          {"h_bucket{le=0.5}": 3.0, "h_bucket{le=+Inf}": 3.0}], "h")
    {0.5: 4.0, inf: 5.0}
    """
    prefix = name + "_bucket{"
    out: dict[float, float] = {}
    for scraped in metrics:
        for key, value in scraped.items():
            if key.startswith(prefix):
                labels = dict(pair.split("=", 1) for pair in key[len(prefix) : -1].split(","))
                bound = float(labels["le"])
                out[bound] = out.get(bound, 0.0) + value
    return dict(sorted(out.items()))


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """The ``q`` quantile of a histogram as Prometheus estimates it (linear within a bucket;
    the highest finite bound if it falls in ``+Inf``); None without observations.

    >>> histogram_quantile(0.5, {0.1: 2.0, 1.0: 4.0, float("inf"): 4.0})
    0.1
    >>> histogram_quantile(0.99, {0.1: 0.0, 1.0: 10.0, float("inf"): 10.0})
    0.991
    >>> histogram_quantile(0.99, {}) is None
    True
    """
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return round(lower + (bound - lower) * (rank - below) / (count - below), 6)
        lower, below = bound, count
    return lower


def vm_rss_mb(status: str) -> float:
    """Resident memory in MB from a ``/proc/<pid>/status`` text.

    >>> vm_rss_mb("Name:\\ttansu\\nVmRSS:\\t  204800 kB\\n")
    200.0
    """
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _cell(value: Any, digits: int = 0, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"


def row(run: dict[str, Any]) -> str:
    """One run as a line of :func:`table`."""
    aucs = " ".join(_cell(run["tasks"][task]["auc"], 3) for task in TASKS)
    return (
        f"{run['workers']:>7} {_cell(run['events_per_s']):>10} "
        f"{_cell(run['cpu_seconds_per_event'], 1, 1e6):>10} {_cell(run['startup_s'], 1):>8} "
        f"{run['reapplied']:>9,} {aucs:>20} {_cell(run['sync_lag_p99_s'], 3):>9} "
        f"{_cell(run['sync_bytes_per_min']):>12} {_cell(run['broker_rss_mb']):>9}"
    )


def header() -> str:
    """The column names of :func:`table`."""
    return (
        f"{'workers':>7} {'events/s':>10} {'CPU us/ev':>10} {'start s':>8} {'reapplied':>9} "
        f"{'AUC click cart purch':>20} {'sync p99':>9} {'sync B/min':>12} {'broker MB':>9}"
    )


def table(report: dict[str, Any]) -> str:
    """The runs as a text table, then the medians over the rounds."""
    lines = [header(), *(row(run) for run in report["runs"])]
    lines.append(f"median of {report['rounds']} round(s):")
    for summary in report["medians"]:
        aucs = " ".join(_cell(summary["tasks"][task]["auc"], 3) for task in TASKS)
        lines.append(
            f"{summary['workers']:>7} {_cell(summary['events_per_s']):>10} "
            f"{_cell(summary['cpu_seconds_per_event'], 1, 1e6):>10} {aucs:>39}   "
            f"x{_cell(summary['speedup'], 2)} events/s, x{_cell(summary['cpu_ratio'], 2)} CPU/event"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Events/s and CPU per event against the worker count, with linear scaling for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in report["runs"] if r["events_per_s"] is not None]
    summaries = [m for m in report["medians"] if m["events_per_s"] is not None]
    counts = [m["workers"] for m in summaries]
    rates = [m["events_per_s"] for m in summaries]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(counts, rates, "o-", label="median")
    left.plot([r["workers"] for r in runs], [r["events_per_s"] for r in runs], ".", color="grey")
    if summaries:
        per_worker = rates[0] / counts[0]
        left.plot(counts, [per_worker * k for k in counts], "k--", lw=1, label="linear")
    left.set_xlabel("workers")
    left.set_ylabel("events/s")
    left.set_xticks(counts)
    left.legend()
    cpu = [m["cpu_seconds_per_event"] * 1e6 for m in summaries]
    right.plot(counts, cpu, "o-", color="tab:red", label="median")
    right.plot(
        [r["workers"] for r in runs],
        [r["cpu_seconds_per_event"] * 1e6 for r in runs],
        ".",
        color="grey",
        label="each round",
    )
    right.set_xlabel("workers")
    right.set_ylabel("CPU µs per event (all workers)")
    right.set_xticks(counts)
    right.legend()
    fig.suptitle(f"recstream bench scale: {report['events']:,} events on the embedded broker")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
