"""``recstream demo``: the whole system on one machine, watched live, then a report.

The embedded broker (or ``--broker``), the simulated shop producing at
``--rate`` events/s with event time = wall-clock time, the worker as its own
process (exactly as ``recstream worker`` runs), a score consumer measuring
event-to-readable latency, and a live status table fed by the worker's own
``/metrics`` endpoint -- what an operator's Prometheus would scrape.

With ``--workers N`` it starts N workers in one consumer group, each with
its own metrics port (``--metrics-port`` + i, or free ports) and checkpoint
directory; the status table then sums their counters and averages their
gauges (AUC, log loss, model version). Until the workers share one model,
each learns from its own partitions only.

Example
-------
>>> run_demo(Settings(), DemoOptions(duration_s=30, rate=500))     # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.live import Live
from rich.table import Table

from online_models.base import TASKS
from producers.client import EventPublisher, PublishReport
from producers.contract import CatalogItem, Event
from producers.recording import recorded
from producers.simulator import Shop, ShopConfig, on_wall_clock
from streams.broker import free_port
from streams.connection import connect, stop_on_signals
from streams.progress import stderr
from streams.score_watch import ScoreWatcher
from streams.settings import Settings

RECORDING = "events.jsonl"  # in the demo's --out directory, beside worker.log
EVENTS_PER_SESSION = 16  # simulator average with impressions on the wire
# The shop's delays, compressed so that a one-minute demo resolves its labels: clicks come
# 4-62 ms after their impression, a cart 0.125-3.75 s after its click and a purchase as long
# after its cart (2-30 s, 1-30 minutes and 1-30 minutes in the simulated shop). The live
# metrics are measured on samples whose labels are final (online_models.live_quality), so
# the cart figure lags by the conversion window: 8 s here, not the minutes of a real shop.
DELAY_SCALE = 1 / 480


@dataclass(frozen=True)
class DemoOptions:
    """How long, how fast, where the report goes."""

    duration_s: float = 90.0
    rate: float = 2000.0
    report: Path | None = None
    metrics_port: int | None = None
    seed: int = 7
    impressions: bool = True
    click_window_s: float = 2.0
    click_wait_s: float = 60 * DELAY_SCALE  # twice the shop's longest click delay
    conversion_window_s: float = 8.0  # a purchase comes at most 7.5 s after its click
    # Item demand over 20 s of (wall-clock) event time, points every 5 s: the shop's hour of
    # conversions takes 7.5 s here, and a forecast resolves within a 90 s demo.
    demand_horizon_s: float = 20.0
    out_dir: Path = Path("demo-run")  # the worker's log and the recording of the stream
    drain_timeout_s: float = 60.0
    workers: int = 1  # worker processes in one consumer group

    def worker_settings(self) -> Settings:
        """The label windows and waits the demo gives its worker, as worker settings."""
        return Settings(
            impressions=self.impressions,
            click_window_s=self.click_window_s,
            click_wait_s=self.click_wait_s,
            conversion_window_s=self.conversion_window_s,
        )


class LiveShop:
    """The simulator's records stamped with wall-clock time as they are sent.

    Remembers which catalog items arrived during the run and when each item
    was first interacted with, for the cold-start part of the report.
    """

    def __init__(self, config: ShopConfig) -> None:
        self.shop = Shop(config)
        self.new_items: dict[str, float] = {}
        self.first_interaction: dict[str, float] = {}
        self.active_users: set[str] = set()
        self._started = False

    def records(self) -> Iterator[Event | CatalogItem]:
        for record in on_wall_clock(self.shop.records()):
            if isinstance(record, CatalogItem):
                if self._started:
                    self.new_items[record.item_id] = record.ts
            else:
                self._started = True
                if record.type != "impression":
                    self.first_interaction.setdefault(record.item_id, record.ts)
                    self.active_users.add(record.user_id)
            yield record


def scrape(url: str) -> dict[str, float]:
    """The worker's metrics as {'name{label=value}': value}; empty if it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {'name{label=value,...}': value}, labels sorted by name.

    >>> parse_metrics('# TYPE x counter\\nx_total{type="click"} 3.0\\nup 1.0\\n')
    {'x_total{type=click}': 3.0, 'up': 1.0}
    """
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _total(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix + "{") or k == prefix)


def _labelled(metrics: dict[str, float], name: str) -> dict[str, int]:
    """Non-zero series of a counter by their labels.

    >>> _labelled({"x_total{task=click}": 1.0, "x_total{task=cart}": 0.0, "y": 3.0}, "x_total")
    {'task=click': 1}
    """
    prefix = name + "{"
    return {k[len(prefix) : -1]: int(v) for k, v in metrics.items() if k.startswith(prefix) and v}


def run_demo(settings: Settings, options: DemoOptions) -> dict[str, Any]:
    """Run the demo; return (and write, if asked) the report."""
    with connect(settings) as bootstrap, tempfile.TemporaryDirectory(prefix="recstream-") as tmp:
        ports = metrics_ports(options.metrics_port, options.workers)
        urls = [f"http://127.0.0.1:{port}/metrics" for port in ports]
        logs = [options.out_dir / name for name in _names("worker", ".log", options.workers)]
        checkpoints = [Path(tmp) / name for name in _names("checkpoints", "", options.workers)]
        options.out_dir.mkdir(parents=True, exist_ok=True)
        workers = []
        try:
            for i, port in enumerate(ports):
                workers.append(
                    _start_worker(bootstrap, settings, options, port, checkpoints[i], logs[i])
                )
                if options.workers > 1:
                    stderr.print(f"worker {i + 1}: metrics on {urls[i]}")
            for url, worker, log in zip(urls, workers, logs, strict=True):
                _wait_for_worker(url, worker, log)
            report = _run(bootstrap, settings, options, urls, workers)
        finally:
            for worker in workers:
                _stop(worker)
        report["metrics_url"] = urls[0]
        report["worker_log"] = str(logs[0])
        if options.workers > 1:
            report["workers"] = options.workers
            report["metrics_urls"] = urls
        report["recording"] = str(options.out_dir / RECORDING)
        report["replay"] = replay_command(options)
    if options.report:
        options.report.write_text(json.dumps(report, indent=2) + "\n")
        stderr.print(f"report written to {options.report}")
    return report


def replay_command(options: DemoOptions) -> str:
    """The ``bench quality`` command that replays the demo's recording as its worker labelled it:
    its live figures (the report's ``live``) are comparable with the demo report's ``tasks``.

    >>> replay_command(DemoOptions(out_dir=Path("run")))  # doctest: +NORMALIZE_WHITESPACE
    'recstream bench quality --source run/events.jsonl --models mtl --click-window 2.0
     --click-wait 0.125 --conversion-window 8.0'
    """
    flags = [
        f"--source {options.out_dir / RECORDING}",
        "--models mtl",
        f"--click-window {options.click_window_s}",
        f"--click-wait {options.click_wait_s}",
        f"--conversion-window {options.conversion_window_s}",
    ]
    if not options.impressions:
        flags.append("--no-impressions")
    return "recstream bench quality " + " ".join(flags)


def metrics_ports(base: int | None, workers: int) -> list[int]:
    """The workers' metrics ports: ``base``, ``base + 1``, ... or free ones without a base.

    >>> metrics_ports(9100, 3)
    [9100, 9101, 9102]
    """
    return [base + i for i in range(workers)] if base else [free_port() for _ in range(workers)]


def _names(stem: str, suffix: str, workers: int) -> list[str]:
    """One worker's file is ``stem`` as before; several are numbered.

    >>> _names("worker", ".log", 1), _names("worker", ".log", 2)
    (['worker.log'], ['worker-1.log', 'worker-2.log'])
    """
    if workers == 1:
        return [stem + suffix]
    return [f"{stem}-{i + 1}{suffix}" for i in range(workers)]


def _start_worker(
    bootstrap: str,
    settings: Settings,
    options: DemoOptions,
    port: int,
    checkpoint_dir: Path,
    log_path: Path,
) -> subprocess.Popen[bytes]:
    command = worker_command(bootstrap, settings, options, port, checkpoint_dir)
    with open(log_path, "wb") as log:  # the child keeps its own copy
        return subprocess.Popen(command, stdout=log, stderr=log)


def worker_command(
    bootstrap: str, settings: Settings, options: DemoOptions, port: int, checkpoint_dir: Path
) -> list[str]:
    """``recstream worker`` as the demo runs it: its topic prefix, label windows and model
    settings.

    >>> worker_command("b:9092", Settings(), DemoOptions(), 9100, Path("ck"))[1:4]
    ['worker', '--broker', 'b:9092']
    """
    return [
        str(Path(sys.executable).with_name("recstream")),
        "worker",
        "--broker",
        bootstrap,
        "--metrics-port",
        str(port),
        "--checkpoint-dir",
        str(checkpoint_dir),
        "--topic-prefix",
        settings.topic_prefix,
        *worker_flags(settings, options),
    ]


def worker_flags(settings: Settings, options: DemoOptions) -> list[str]:
    """The worker flags of the demo's label windows and model, without broker, port or paths.

    >>> worker_flags(Settings(), DemoOptions(impressions=False))[:2]
    ['--click-window', '2.0']
    """
    flags = [
        "--click-window",
        str(options.click_window_s),
        "--click-wait",
        str(options.click_wait_s),
        "--conversion-window",
        str(options.conversion_window_s),
        "--demand-horizon",
        str(options.demand_horizon_s),
        "--sync-interval",
        str(settings.sync_interval_s),
        *model_flags(settings),
    ]
    if not options.impressions:
        flags.append("--no-impressions")
    return flags


def model_flags(settings: Settings) -> list[str]:
    """The worker flags that give its model the demo's model settings (flags or environment).

    >>> model_flags(Settings(towers="mmoe", task_weights=(1.0, 0.0, 2.5)))[:4]
    ['--towers', 'mmoe', '--task-weights', '1.0,0.0,2.5']
    """
    return [
        "--towers",
        settings.towers,
        "--task-weights",
        ",".join(repr(w) for w in settings.task_weights),
        "--task-weighting",
        settings.task_weighting,
        "--ranking-objective",
        settings.ranking_objective,
        "--ranking-weights",
        ",".join(repr(w) for w in settings.ranking_weights),
        "--torch-threads",
        str(settings.torch_threads),
    ]


def _wait_for_worker(
    url: str, worker: subprocess.Popen[bytes], log: Path, timeout_s: float = 90.0
) -> None:
    """Until the worker serves metrics and has its partitions (so latency is not join time)."""
    deadline = time.monotonic() + timeout_s
    with stderr.status("starting the worker and joining the consumer group..."):
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the worker exited with code {worker.returncode}:\n{tail}")
            if scrape(url).get("recstream_assigned_partitions", 0) > 0:
                return
            time.sleep(0.25)
    raise RuntimeError(f"the worker was not ready within {timeout_s:.0f} s")


def _run(
    bootstrap: str,
    settings: Settings,
    options: DemoOptions,
    urls: list[str],
    workers: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    expected = int(options.duration_s * options.rate) + 1
    shop = LiveShop(
        ShopConfig(
            seed=options.seed,
            events=max(expected, 10_000),
            impressions=options.impressions,
            sessions_per_second=options.rate / EVENTS_PER_SESSION,
            delay_scale=DELAY_SCALE,
        )
    )
    watcher = ScoreWatcher(
        bootstrap, settings.topics.scores, client_config=settings.kafka_client_config()
    ).start()
    publisher = EventPublisher(
        bootstrap,
        settings.topics.events,
        settings.topics.items,
        rate=options.rate,
        client_config=settings.kafka_client_config(),
    )
    stop = threading.Event()
    produced: list[PublishReport] = []
    records = recorded(shop.records(), options.out_dir / RECORDING)
    producer = threading.Thread(
        target=lambda: produced.append(publisher.publish(records, stop=stop)),
        name="producer",
        daemon=True,
    )
    started = time.monotonic()
    producer.start()
    metrics: dict[str, float] = {}
    with stop_on_signals() as interrupted, Live(console=stderr, refresh_per_second=2) as live:
        while time.monotonic() - started < options.duration_s and not interrupted.is_set():
            interrupted.wait(1.0)
            metrics = _scrape_all(urls) or metrics
            live.update(_status(metrics, watcher, time.monotonic() - started))
            if any(worker.poll() is not None for worker in workers):
                break
        stop.set()
        producer.join()
        records.close()  # the recording's last lines reach the file
        duration = time.monotonic() - started
        sent = produced[0] if produced else PublishReport()
        deadline = time.monotonic() + options.drain_timeout_s
        while time.monotonic() < deadline and all(w.poll() is None for w in workers):
            metrics = _scrape_all(urls) or metrics
            live.update(_status(metrics, watcher, time.monotonic() - started))
            if _processed(metrics) >= sent.events_sent:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # the last scores reach the topic
        metrics = _scrape_all(urls) or metrics
    watcher.stop()
    publisher.close()
    return _report(duration, sent, metrics, watcher, shop)


def _scrape_all(urls: list[str]) -> dict[str, float]:
    """One worker's metrics as they are; several workers' merged by :func:`merge_metrics`
    (empty while any of them does not answer)."""
    scraped = [scrape(url) for url in urls]
    return merge_metrics(scraped) if all(scraped) else {}


def merge_metrics(scraped: list[dict[str, float]]) -> dict[str, float]:
    """Several workers' metrics as one: counters and histogram series summed, gauges averaged.

    >>> merge_metrics([{"a_total": 2.0, "recstream_auc{task=click}": 0.7},
    ...                {"a_total": 3.0, "recstream_auc{task=click}": 0.8}])
    {'a_total': 5.0, 'recstream_auc{task=click}': 0.75}
    """
    if len(scraped) == 1:
        return scraped[0]
    out: dict[str, float] = {}
    for name in dict.fromkeys(name for metrics in scraped for name in metrics):
        values = [metrics[name] for metrics in scraped if name in metrics]
        summed = name.split("{")[0].endswith(("_total", "_bucket", "_count", "_sum"))
        out[name] = sum(values) if summed else sum(values) / len(values)
    return out


def _processed(metrics: dict[str, float]) -> float:
    return _total(metrics, "recstream_events_total") + _total(
        metrics, "recstream_invalid_events_total"
    )


def _status(metrics: dict[str, float], watcher: ScoreWatcher, elapsed: float) -> Table:
    table = Table(title=f"recstream demo - {elapsed:,.0f} s", show_header=False)
    processed = _processed(metrics)
    table.add_row("events processed", f"{processed:,.0f}  ({processed / max(elapsed, 1):,.0f}/s)")
    table.add_row("invalid events", f"{_total(metrics, 'recstream_invalid_events_total'):,.0f}")
    table.add_row("model version", f"{metrics.get('recstream_model_version', 0):,.0f}")
    for task in TASKS:
        table.add_row(f"{task} AUC / log loss", _task_quality(metrics, task))
    table.add_row("drift alarms", f"{_total(metrics, 'recstream_drift_detections_total'):,.0f}")
    table.add_row(
        "scores published",
        f"{metrics.get('recstream_scores_published_total', 0):,.0f}"
        f"  ({len(watcher.users):,} users)",
    )
    table.add_row(
        "latency p50 / p99",
        f"{watcher.latency_ms(50):,.0f} / "
        f"{watcher.latency_ms(99):,.0f} ms (event time -> readable score)",
    )
    table.add_row("cold items", f"{metrics.get('recstream_cold_items', 0):,.0f}")
    busy = metrics.get("recstream_pipeline_cpu_seconds_total", 0.0) / max(elapsed, 1.0)
    table.add_row("model path busy", f"{busy:.0%} of a core (the rest is headroom)")
    return table


def _task_quality(metrics: dict[str, float], task: str) -> str:
    """A task's live AUC and log loss, or how far its warm-up has come.

    >>> _task_quality({"recstream_auc{task=click}": 0.71, "recstream_logloss{task=click}": 0.2,
    ...                "recstream_quality_warmup_needed": 200}, "click")
    '0.710 / 0.2000'
    >>> _task_quality({"recstream_quality_warmup_labels{task=cart}": 37,
    ...                "recstream_quality_warmup_needed": 200}, "cart")
    'warming up (37 of 200 labels)'
    """
    auc = metrics.get(f"recstream_auc{{task={task}}}", float("nan"))
    loss = metrics.get(f"recstream_logloss{{task={task}}}", float("nan"))
    if math.isnan(auc):
        have = metrics.get(f"recstream_quality_warmup_labels{{task={task}}}", 0)
        need = metrics.get("recstream_quality_warmup_needed", 0)
        return f"warming up ({have:,.0f} of {need:,.0f} labels)"
    return f"{auc:.3f} / {loss:.4f}"


def _report(
    duration: float,
    sent: PublishReport,
    metrics: dict[str, float],
    watcher: ScoreWatcher,
    shop: LiveShop,
) -> dict[str, Any]:
    scored_first = sum(
        1
        for item, arrived in shop.new_items.items()
        if item in watcher.first_seen
        and watcher.first_seen[item][0] < shop.first_interaction.get(item, float("inf"))
    )
    return {
        "duration_s": round(duration, 1),
        "events_produced": sent.events_sent,
        "events_processed": int(_processed(metrics)),
        "invalid_events": int(_total(metrics, "recstream_invalid_events_total")),
        "scores_published": int(metrics.get("recstream_scores_published_total", 0)),
        "active_users": len(shop.active_users),
        "active_users_scored": len(shop.active_users & watcher.users),
        "tasks": {
            task: {
                name: metrics.get(f"recstream_{name}{{task={task}}}", float("nan"))
                for name in ("auc", "logloss", "label_rate", "mean_prediction")
            }
            for task in TASKS
        },
        "cold_items": {
            "new_items": len(shop.new_items),
            "scored_before_first_interaction": scored_first,
        },
        "pipeline_cpu_share": round(
            metrics.get("recstream_pipeline_cpu_seconds_total", 0.0) / max(duration, 1.0), 3
        ),
        "latency_ms": {
            "p50": round(watcher.latency_ms(50), 1),
            "p99": round(watcher.latency_ms(99), 1),
            "p99_by_10s": watcher.latency_by_window(10.0),
        },
        "drift": {
            "detections": int(_total(metrics, "recstream_drift_detections_total")),
            "by": _labelled(metrics, "recstream_drift_detections_total"),
        },
    }


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
