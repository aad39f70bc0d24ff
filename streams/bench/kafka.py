"""``recstream bench throughput --kafka``: the worker end to end, beside what bounds it.

The demo's stream (``--events`` events of the simulated shop, ``--seed``) is
put on the embedded broker, on a topic prefix of each round's own (a worker
would otherwise continue the previous round's model from ``sync``, as a
worker that joins a group does). Then each round measures, on its topics:

(a) ``in_process``: the worker's pipeline on the same messages without Kafka,
    in batches of the worker's ``--batch-size`` (what the worker receives from
    a topic filled beforehand);
(b) ``worker``: the real ``recstream worker`` process with the demo's
    settings and a fresh checkpoint directory;
(c) ``faust_passthrough``: a minimal Faust app on Faust's own consumer
    (``take_events(1000)``, JSON decode, one send per acting user) at the
    worker's fetch wait;
(d) ``client_reader``: a bare aiokafka ``getmany`` loop with JSON decode.

A rate runs from the first to the last applied event, so joining the group
is not counted, and a run is done when its applied count reaches N (the
embedded broker's high watermark lags, so never by watermarks). The worker's
count is read off its ``/metrics``; its CPU split compares its process CPU
time (``/proc``) with ``recstream_pipeline_cpu_seconds_total`` over the same
window. Every figure is the median of ``--runs`` rounds.

Example
-------
>>> report = run(KafkaBenchOptions(events=2_000, runs=1))     # doctest: +SKIP
>>> sorted(report)[:3]                                          # doctest: +SKIP
['client_reader', 'events', 'faust_passthrough']
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from streams.bench import throughput as bench_throughput
from streams.bench.throughput import demo_stream
from streams.broker import EmbeddedBroker, free_port
from streams.demo import DemoOptions, scrape, worker_command
from streams.pipeline import RawMessage
from streams.progress import stderr
from streams.settings import Settings, TopicNames
from streams.topics import ensure_topics

RUNNERS = ("in_process", "worker", "faust_passthrough", "client_reader")
SCRAPE_EVERY_S = 0.1
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class KafkaBenchOptions:
    """How much stream, how many rounds, where the figures go."""

    events: int = 100_000
    seed: int = 7
    runs: int = 3
    report: Path | None = None
    plot: Path | None = None
    tansu_bin: str | None = None


def run(options: KafkaBenchOptions) -> dict[str, Any]:
    """Run every runner ``options.runs`` times, each round on freshly filled topics of its own
    prefix (a worker on the previous round's prefix would continue that round's model from
    ``sync``, as a worker joining a group does); return the medians."""
    settings = DemoOptions().worker_settings()
    catalog, stream = demo_stream(options.events, options.seed)
    rounds: list[dict[str, dict[str, float]]] = []
    with EmbeddedBroker(binary=options.tansu_bin) as broker:
        for number in range(options.runs):
            label = f"round {number + 1}/{options.runs}"
            fresh = replace(settings, topic_prefix=f"round{number + 1}.")
            ensure_topics(broker.bootstrap, fresh.topics, fresh.partitions)
            with stderr.status(f"{label}: putting {options.events:,} events on the broker..."):
                fill(broker.bootstrap, fresh.topics, catalog, stream)
            rounds.append(_round(broker.bootstrap, fresh, options, number, label))
    report = _summarise(rounds, options, settings)
    if options.report:
        options.report.write_text(json.dumps(report, indent=2) + "\n")
    if options.plot:
        plot(report, options.plot)
    return report


def fill(
    bootstrap: str, topics: TopicNames, catalog: list[RawMessage], stream: list[RawMessage]
) -> None:
    """Put the catalog on ``items`` and the stream on ``events`` (as :func:`demo_stream` makes
    them), acknowledged by the broker, before any worker reads."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for topic, messages in ((topics.items, catalog), (topics.events, stream)):
        for message in messages:
            producer.send(topic, key=message.key, value=message.value)
    producer.flush()
    producer.close()


def _round(
    bootstrap: str, settings: Settings, options: KafkaBenchOptions, number: int, label: str
) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    with stderr.status(f"{label}: the pipeline in-process..."):
        report = bench_throughput.run(
            bench_throughput.ThroughputOptions(
                events=options.events, batch=settings.batch_size, seed=options.seed, progress=False
            )
        )
        figures["in_process"] = {"events_per_s": report["events_per_s"]}
    with stderr.status(f"{label}: recstream worker..."):
        figures["worker"] = _run_worker(bootstrap, settings, options.events)
    with stderr.status(f"{label}: Faust pass-through..."):
        figures["faust_passthrough"] = _run_helper(
            "faust", bootstrap, settings, options.events, f"bench-passthrough-{number}"
        )
    with stderr.status(f"{label}: bare client reader..."):
        figures["client_reader"] = _run_helper(
            "reader", bootstrap, settings, options.events, f"bench-reader-{number}"
        )
    stderr.print(
        f"{label}: "
        + ", ".join(f"{name} {figures[name]['events_per_s']:,.0f}/s" for name in RUNNERS)
    )
    return figures


def _run_worker(bootstrap: str, settings: Settings, events: int) -> dict[str, float]:
    """The real worker process; its rate and CPU split between two scrapes inside its busy time."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with tempfile.TemporaryDirectory(prefix="recstream-bench-") as tmp:
        command = worker_command(bootstrap, settings, DemoOptions(), port, Path(tmp) / "ck")
        with open(Path(tmp) / "worker.log", "wb") as log:
            worker = subprocess.Popen(command, stdout=log, stderr=log)
            try:
                samples = _watch_worker(worker, url, events)
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)
    busy = samples[:-1] if len(samples) > 2 else samples  # the last scrape may include idle time
    (t0, n0, cpu0, pipe0), (t1, n1, cpu1, pipe1) = busy[0], busy[-1]
    process_cpu = max(cpu1 - cpu0, 1e-9)
    pipeline = min(1.0, (pipe1 - pipe0) / process_cpu)
    return {
        "events_per_s": round((n1 - n0) / (t1 - t0), 1),
        "cpu_split": {"pipeline": round(pipeline, 3), "message_path": round(1 - pipeline, 3)},
    }


def _watch_worker(
    worker: subprocess.Popen[bytes], url: str, events: int
) -> list[tuple[float, float, float, float]]:
    """(time, applied, process CPU s, pipeline CPU s) at every scrape from the first applied event.

    The last one is the first scrape that saw all ``events`` applied; the
    others fall inside the worker's busy time. A stream applied whole between
    two scrapes is timed from the scrape before it (a rate of 0 before).
    """
    idle: tuple[float, float, float, float] | None = None
    samples: list[tuple[float, float, float, float]] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        metrics = scrape(url)
        now, cpu = time.monotonic(), process_cpu_s(worker.pid)
        applied = _applied(metrics)
        sample = (now, applied, cpu, metrics.get("recstream_pipeline_cpu_seconds_total", 0.0))
        if applied == 0 and metrics:
            idle = sample  # the last scrape before the first applied event
        elif applied > 0:
            if not samples and idle is not None and applied >= events:
                samples.append(idle)  # all of it between two scrapes: time it from the one before
            samples.append(sample)
        if applied >= events and len(samples) >= 2:
            return samples
        time.sleep(SCRAPE_EVERY_S)
    raise RuntimeError(f"the worker did not apply {events:,} events in {RUN_TIMEOUT_S:.0f} s")


def _applied(metrics: dict[str, float]) -> float:
    return sum(
        value
        for name, value in metrics.items()
        if name.startswith(("recstream_events_total{", "recstream_invalid_events_total{"))
    )


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process, from /proc."""
    return stat_cpu_s(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))


def stat_cpu_s(stat: str, ticks_per_s: int) -> float:
    """User plus system CPU seconds in a ``/proc/<pid>/stat`` line (``utime``, ``stime``: the
    14th and 15th fields; the command name in parentheses may hold spaces).

    >>> stat_cpu_s("42 (a b) S 1 42 42 0 -1 4194304 9 0 0 0 250 30 0 0 20 0 1", 100)
    2.8
    """
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_s


def _run_helper(
    kind: str, bootstrap: str, settings: Settings, events: int, group: str
) -> dict[str, float]:
    """Run one of this module's comparison readers as its own process; read its JSON line."""
    command = [
        sys.executable,
        "-m",
        "streams.bench.kafka",
        kind,
        "--broker",
        bootstrap,
        "--topic",
        settings.topics.events,
        "--events",
        str(events),
        "--group",
        group,
        "--fetch-wait-ms",
        str(settings.fetch_wait_ms),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    found = re.findall(r"\{.*\}", done.stdout)  # Faust may write terminal codes before it
    if not found:
        raise RuntimeError(f"the {kind} reader reported nothing: {done.stderr[-2000:]}")
    return json.loads(found[-1])


def _summarise(
    rounds: list[dict[str, dict[str, float]]], options: KafkaBenchOptions, settings: Settings
) -> dict[str, Any]:
    def median(name: str) -> float:
        return round(statistics.median(r[name]["events_per_s"] for r in rounds), 1)

    report: dict[str, Any] = {
        "events": options.events,
        "seed": options.seed,
        "runs": options.runs,
        "batch_size": settings.batch_size,
        "fetch_wait_ms": settings.fetch_wait_ms,
    }
    for name in RUNNERS:
        report[name] = {"events_per_s": median(name)}
    report["worker"]["cpu_split"] = {
        part: round(statistics.median(r["worker"]["cpu_split"][part] for r in rounds), 3)
        for part in ("message_path", "pipeline")
    }
    report["worker_ratio"] = round(
        report["worker"]["events_per_s"] / report["in_process"]["events_per_s"], 3
    )
    report["rounds"] = rounds
    return report


def print_summary(report: dict[str, Any], write: Any = print) -> None:
    """The figures a person reads first."""
    write(
        f"{report['events']:,} events on the embedded broker, median of {report['runs']} runs "
        f"(batches of up to {report['batch_size']}, fetch wait {report['fetch_wait_ms']} ms):"
    )
    for name in RUNNERS:
        write(f"  {name:<18} {report[name]['events_per_s']:>10,.0f} events/s")
    split = report["worker"]["cpu_split"]
    write(
        f"  worker / in-process: {report['worker_ratio']:.2f}; worker CPU: "
        f"{split['pipeline']:.0%} pipeline, {split['message_path']:.0%} message path"
    )


def plot(report: dict[str, Any], path: Path) -> None:
    """Events/s of each runner: the median as a bar, each round as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for x, name in enumerate(RUNNERS):
        ax.bar(x, report[name]["events_per_s"], color="tab:blue", alpha=0.6)
        rates = [r[name]["events_per_s"] for r in report["rounds"]]
        ax.plot([x] * len(rates), rates, "k.", ms=6)
    ax.set_xticks(range(len(RUNNERS)), [name.replace("_", " ") for name in RUNNERS])
    ax.set_yscale("log")
    ax.set_ylabel("events/s (log scale)")
    ax.set_title(f"recstream: {report['events']:,} events on the embedded broker")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------ comparison readers


def _client_reader(args: argparse.Namespace) -> dict[str, float]:
    """A bare aiokafka reader: getmany and JSON decode, nothing else."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> dict[str, float]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=args.broker,
            enable_auto_commit=False,
            fetch_max_wait_ms=args.fetch_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        await consumer.topics()
        partitions = [
            TopicPartition(args.topic, p) for p in consumer.partitions_for_topic(args.topic)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count, first = 0, 0.0
        while count < args.events:
            fetched = await consumer.getmany(timeout_ms=100, max_records=1000)
            if fetched and not first:
                first = time.perf_counter()
            for records in fetched.values():
                for record in records:
                    json.loads(record.value)
                count += len(records)
        seconds = time.perf_counter() - first
        await consumer.stop()
        return {"events_per_s": round(count / seconds, 1)}

    return asyncio.run(read())


def _faust_passthrough(args: argparse.Namespace) -> None:
    """Faust's own consumer, per-message path and all: decode, one send per acting user."""
    import faust

    from streams.bench.faust_hooks import use_fetch_wait

    use_fetch_wait(args.fetch_wait_ms)
    datadir = tempfile.mkdtemp(prefix="recstream-passthrough-")
    app = faust.App(
        args.group,
        broker=f"kafka://{args.broker}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        datadir=datadir,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        loghandlers=[],
    )
    events = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    out = app.topic(args.topic + ".passthrough", key_serializer="raw", value_serializer="raw")
    seen = {"count": 0, "first": 0.0}

    @app.agent(events)
    async def passthrough(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(1000, within=0.1):
            seen["first"] = seen["first"] or time.perf_counter()
            users = {json.loads(event.value)["user_id"] for event in batch}
            for user in users:
                await out.send(key=user.encode(), value=b"{}")
            seen["count"] += len(batch)
            if seen["count"] >= args.events:
                seconds = time.perf_counter() - seen["first"]
                print(json.dumps({"events_per_s": round(seen["count"] / seconds, 1)}), flush=True)
                os.kill(os.getpid(), signal.SIGTERM)

    faust.Worker(
        app, loglevel="error", quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


def main(argv: list[str] | None = None) -> None:
    """``python -m streams.bench.kafka faust|reader ...``: one comparison reader, one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m streams.bench.kafka")
    parser.add_argument("kind", choices=["faust", "reader"])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--fetch-wait-ms", dest="fetch_wait_ms", type=int, default=10)
    args = parser.parse_args(argv)
    if args.kind == "reader":
        print(json.dumps(_client_reader(args)), flush=True)
    else:
        _faust_passthrough(args)


if __name__ == "__main__":
    main()
