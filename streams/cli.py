"""The ``recstream`` command: one parser, one small function per subcommand.

Settings are read here once (environment, then flags) and passed down.

Example
-------
>>> args = build_parser().parse_args(["produce", "--source", "sim", "--events", "10"])
>>> args.command, args.events, args.rate
('produce', 10, 0.0)
>>> args = build_parser().parse_args(["worker", "--towers", "mmoe", "--task-weights", "1,2,4"])
>>> Settings.from_env({}).with_args(args).model_config().architecture
'mmoe'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from producers.contract import CatalogItem, Event
from streams.control import Command
from streams.ranking import OBJECTIVES
from streams.settings import (
    TASK_WEIGHTINGS,
    TOWERS,
    Settings,
    add_connection_arguments,
    parse_ranking_weights,
    parse_task_weights,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env().with_args(args)
    except ValueError as err:  # an environment variable that cannot be used
        print(f"recstream {args.command}: error: {err}", file=sys.stderr)
        return 2
    try:
        return int(args.run(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except RecstreamError as err:
        print(f"recstream {args.command}: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recstream",
        description="Streaming multi-task learner for e-commerce recommendation.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = commands.add_parser("broker", help="run the embedded broker in the foreground")
    broker.add_argument("--port", type=int, help="loopback port (default: a free one)")
    broker.add_argument("--partitions", type=int, help="partitions of created topics")
    broker.add_argument("--topic-prefix", dest="topic_prefix")
    broker.set_defaults(run=run_broker)

    produce = commands.add_parser("produce", help="publish events from the simulator or a log")
    add_connection_arguments(produce)
    add_source_arguments(produce)
    produce.add_argument(
        "--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)"
    )
    produce.add_argument(
        "--wall-clock",
        dest="wall_clock",
        action="store_true",
        help="stamp each event with the time it is sent (a live shop), not its simulated or "
        "logged time",
    )
    produce.set_defaults(run=run_produce)

    worker = commands.add_parser("worker", help="run the Faust worker against --broker")
    add_connection_arguments(worker)
    add_worker_arguments(worker)
    worker.set_defaults(run=run_worker)

    demo = commands.add_parser("demo", help="broker, simulated shop, worker, live status, report")
    add_connection_arguments(demo)
    demo.add_argument("--duration", type=float, default=90.0, help="seconds to run (default 90)")
    demo.add_argument("--rate", type=float, default=2000.0, help="events per second")
    demo.add_argument("--report", type=Path, help="write the JSON report here")
    demo.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="the worker's metrics port; with --workers N, worker i's is P + i (default: free "
        "ones)",
    )
    demo.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes in one consumer group, each with its own metrics port and "
        "checkpoints (default 1)",
    )
    demo.add_argument("--seed", type=int, default=7, help="simulator seed")
    demo.add_argument("--no-impressions", dest="impressions", action="store_false")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("demo-run"),
        help="directory for the worker's log and the recording of the stream (default demo-run)",
    )
    add_model_arguments(demo)
    demo.set_defaults(run=run_demo)

    scores = commands.add_parser("scores", help="print score records as they arrive")
    add_connection_arguments(scores)
    scores.add_argument("--user", help="only this user's records")
    scores.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record, not the newest"
    )
    scores.set_defaults(run=run_scores)

    erase = commands.add_parser(
        "erase", help="ask the workers to erase users: their state, and their scores (a tombstone)"
    )
    add_connection_arguments(erase)
    erase.add_argument("users", nargs="+", metavar="USER", help="user ids to erase")
    erase.set_defaults(run=run_erase)

    model = commands.add_parser("model", help="the models on disk; freeze, unfreeze, roll back")
    models = model.add_subparsers(dest="model", required=True, metavar="ACTION")
    listing = models.add_parser(
        "list", help="checkpoints with time, model version, offsets and rolling AUC"
    )
    listing.add_argument("--topic-prefix", dest="topic_prefix")
    add_checkpoint_dir_argument(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per checkpoint")
    listing.set_defaults(run=run_model_list)
    for action, help_text in (
        ("freeze", "stop learning: scores and labels go on, the model stays as it is"),
        ("unfreeze", "learn again"),
    ):
        switch = models.add_parser(action, help=help_text)
        add_connection_arguments(switch)
        switch.set_defaults(run=run_model_command)
    rollback = models.add_parser(
        "rollback", help="serve and learn from an earlier model (a checkpoint still on disk)"
    )
    add_connection_arguments(rollback)
    rollback.add_argument("version", type=int, metavar="VERSION", help="its model_version")
    add_checkpoint_dir_argument(
        rollback, help_text="check that VERSION is on disk here before asking (default: no check)"
    )
    rollback.set_defaults(run=run_model_command)

    bench = commands.add_parser("bench", help="benchmarks that print figures")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    quality = benches.add_parser("quality", help="prequential replay comparing every model")
    add_source_arguments(quality)
    windows = quality.add_argument_group(
        "label windows (seconds of event time, as the worker's flags; default: the source's)"
    )
    windows.add_argument(
        "--click-window",
        dest="click_window_s",
        type=float,
        metavar="S",
        help="a click is attributed to an impression shown at most S seconds before",
    )
    windows.add_argument(
        "--click-wait",
        dest="click_wait_s",
        type=float,
        metavar="S",
        help="an impression without a click is learned as a negative after S seconds",
    )
    windows.add_argument(
        "--conversion-window",
        dest="conversion_window_s",
        type=float,
        metavar="S",
        help="a cart/purchase is attributed to a click at most S seconds before",
    )
    quality.add_argument(
        "--no-drift", dest="drift", action="store_false", help="simulator: no injected drift"
    )
    quality.add_argument("--report", type=Path, help="write the JSON report here")
    quality.add_argument("--plot", type=Path, help="write a PNG of rolling AUC per task here")
    quality.add_argument("--batch-size", type=int, default=2048, help="samples per micro-batch")
    quality.add_argument(
        "--batch-span",
        dest="batch_span_s",
        type=_positive_seconds,
        metavar="S",
        help="a micro-batch ends before an event S seconds of event time after its first "
        "(default: see docs/cli.md; 'inf': by size only; a worker's micro-batch spans at "
        "most its batch wait)",
    )
    quality.add_argument(
        "--demand-horizon",
        dest="demand_horizon_s",
        type=float,
        default=3600.0,
        metavar="S",
        help="mtl's item demand forecasts S seconds of event time ahead (default 3600; 0: none)",
    )
    quality.add_argument(
        "--models",
        default="mtl,river_lr,vw,single_task,id_only,popularity",
        help="comma-separated subset of the models to compare",
    )
    quality.add_argument(
        "--init-from",
        dest="init_from",
        type=Path,
        metavar="CHECKPOINT",
        help="start mtl from the shared layers and content rows of the learner in this worker "
        "checkpoint (another shop's), never its user or item rows",
    )
    quality.set_defaults(run=run_bench_quality)
    transfer = benches.add_parser(
        "transfer",
        help="a new shop from another shop's learner against from scratch, over seeds",
    )
    transfer.add_argument(
        "--seeds",
        type=_seeds,
        default=(7, 11, 13),
        metavar="S,S,...",
        help="simulator seeds, one world and two shops each (default 7,11,13)",
    )
    transfer.add_argument(
        "--events", type=int, default=200_000, help="events of each shop (default 200,000)"
    )
    transfer.add_argument("--batch-size", type=int, default=2048, help="samples per micro-batch")
    transfer.add_argument("--report", type=Path, help="write the JSON report here")
    transfer.add_argument("--plot", type=Path, help="write a PNG of shop B's rolling AUC here")
    transfer.set_defaults(run=run_bench_transfer)
    pareto = benches.add_parser(
        "pareto", help="what each setting of the ranking weights earns, and the best of them"
    )
    pareto.add_argument(
        "--source",
        choices=["sim"],
        default="sim",
        help="the simulator: lists are measured by its true probabilities",
    )
    pareto.add_argument("--seed", type=int, default=7, help="simulator seed")
    pareto.add_argument("--events", type=int, default=200_000, help="events to replay")
    pareto.add_argument(
        "--no-impressions",
        dest="impressions",
        action="store_false",
        help="a stream without impressions (negatives sampled)",
    )
    pareto.add_argument("--batch-size", type=int, default=2048, help="samples per micro-batch")
    pareto.add_argument("--report", type=Path, help="write the JSON report here")
    pareto.add_argument("--plot", type=Path, help="write a PNG of the front here")
    pareto.set_defaults(run=run_bench_pareto)
    throughput = benches.add_parser(
        "throughput", help="the worker's pipeline on the demo stream: events/s, batch times"
    )
    throughput.add_argument("--events", type=int, default=100_000, help="events to apply")
    throughput.add_argument(
        "--batch",
        type=int,
        default=200,
        help="messages per batch (200 = 100 ms at the demo's 2,000/s)",
    )
    throughput.add_argument("--seed", type=int, default=7, help="simulator seed")
    throughput.add_argument("--report", type=Path, help="write the JSON report here")
    throughput.add_argument("--plot", type=Path, help="write a PNG of batch times here")
    throughput.add_argument(
        "--kafka",
        action="store_true",
        help="the worker end to end on the embedded broker, beside the in-process pipeline, "
        "a Faust pass-through and a bare client reader",
    )
    throughput.add_argument(
        "--runs", type=int, default=3, help="with --kafka: rounds, figures are medians"
    )
    throughput.set_defaults(run=run_bench_throughput)
    faults = benches.add_parser(
        "faults",
        help="the real worker and broker under faults: applied, lost, applied twice per offset",
    )
    faults.add_argument(
        "--faults",
        type=_fault_names,
        metavar="LIST",
        help="comma-separated subset of sigkill,broker_restart,corrupt_checkpoint,disk_full,"
        "poison_batch,malformed,event_time (default: all)",
    )
    faults.add_argument("--events", type=int, help="most events per run (default 30000)")
    faults.add_argument("--rate", type=float, help="events produced per second (default 400)")
    faults.add_argument("--kills", type=int, help="SIGKILLs of the sigkill run (default 6)")
    faults.add_argument("--seed", type=int, help="seed of the streams and the kill schedule")
    faults.add_argument(
        "--dedupe-events",
        dest="dedupe_events",
        type=int,
        help="the worker's deduplication window (default 1000: shorter than the stream)",
    )
    faults.add_argument("--parallel", type=int, help="runs at a time on this machine (default 3)")
    faults.add_argument(
        "--auc-events", dest="auc_events", type=int, help="events of the event_time check"
    )
    faults.add_argument(
        "--auc-seeds",
        dest="auc_seeds",
        type=lambda text: tuple(int(s) for s in text.split(",")),
        metavar="S,S,...",
        help="seeds of the event_time check (default 7,8,9,10,11)",
    )
    faults.add_argument("--workdir", type=Path, help="keep checkpoints and worker logs here")
    faults.add_argument("--report", type=Path, help="write the JSON report here")
    faults.set_defaults(run=run_bench_faults)
    scale = benches.add_parser(
        "scale", help="1, 2, ... real workers in one group on one stream: events/s, CPU, AUC"
    )
    scale.add_argument(
        "--workers",
        type=_worker_counts,
        default=(1, 2),
        metavar="K,K,...",
        help="worker counts, each run on a fresh broker (default 1,2)",
    )
    scale.add_argument("--events", type=int, default=200_000, help="events of the stream")
    scale.add_argument(
        "--sync-interval",
        dest="sync_interval_s",
        type=float,
        metavar="S",
        help="the workers' --sync-interval (default 3; the stream is replayed ~10x faster than "
        "the demo's 2,000 events/s, so 3 s here is ~30 s of the demo's events)",
    )
    scale.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        metavar="R",
        help="run every count R times, in turn; the report has the medians (default 3)",
    )
    scale.add_argument("--seed", type=int, default=7, help="simulator seed")
    scale.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="seconds a worker count may take, start-up included (default 900)",
    )
    scale.add_argument(
        "--workdir", type=Path, help="keep the workers' logs, checkpoints and predictions here"
    )
    scale.add_argument("--report", type=Path, help="write the JSON report here")
    scale.add_argument("--plot", type=Path, help="write a PNG of events/s and CPU per event here")
    add_model_arguments(scale)
    scale.set_defaults(run=run_bench_scale)
    handover = benches.add_parser(
        "handover",
        help="SIGKILL one of two workers, then start a third, with the stream flowing: "
        "takeover seconds, the joiner's model version and AUC",
    )
    handover.add_argument("--events", type=int, default=120_000, help="events of the stream")
    handover.add_argument("--seed", type=int, default=7, help="simulator seed")
    handover.add_argument(
        "--rate", type=float, default=2_000.0, help="events produced per second (default 2000)"
    )
    handover.add_argument(
        "--kill-at",
        dest="kill_at",
        type=int,
        default=30_000,
        metavar="N",
        help="SIGKILL worker 1 when N events are produced (default 30000)",
    )
    handover.add_argument(
        "--join-at",
        dest="join_at",
        type=int,
        default=60_000,
        metavar="N",
        help="start worker 3 when N events are produced (default 60000)",
    )
    handover.add_argument(
        "--join-events",
        dest="join_events",
        type=int,
        default=10_000,
        metavar="N",
        help="the joiner's first N events are compared (default 20000)",
    )
    handover.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="seconds from the stream's start to every event applied (default 900)",
    )
    handover.add_argument(
        "--workdir", type=Path, help="keep the workers' logs, checkpoints and predictions here"
    )
    handover.add_argument("--report", type=Path, help="write the JSON report here")
    handover.add_argument(
        "--plot", type=Path, help="write a PNG of each worker's applied events over time here"
    )
    add_model_arguments(handover)
    handover.set_defaults(run=run_bench_handover)
    return parser


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        seeds = ()
    if not seeds:
        raise argparse.ArgumentTypeError(f"comma-separated whole numbers, not {text!r}")
    return seeds


def _worker_counts(text: str) -> tuple[int, ...]:
    counts = tuple(_positive_int(part) for part in text.split(",") if part.strip())
    if not counts:
        raise argparse.ArgumentTypeError(f"comma-separated worker counts, not {text!r}")
    return counts


def _fault_names(text: str) -> tuple[str, ...]:
    from streams.bench.faults import FAULTS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FAULTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"not among {', '.join(FAULTS)}: {unknown}")
    return names


def add_checkpoint_dir_argument(
    parser: argparse.ArgumentParser,
    help_text: str = "where checkpoints are written (default ./checkpoints)",
) -> None:
    parser.add_argument("--checkpoint-dir", dest="checkpoint_dir", type=Path, help=help_text)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the worker (also used by the demo)."""
    parser.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="serve Prometheus metrics on this port",
    )
    parser.add_argument(
        "--metrics-host",
        dest="metrics_host",
        help="address to bind the metrics server (default 127.0.0.1)",
    )
    add_checkpoint_dir_argument(parser)
    parser.add_argument(
        "--checkpoint-interval",
        dest="checkpoint_interval_s",
        type=float,
        help="seconds between periodic checkpoints (default 30)",
    )
    parser.add_argument(
        "--keep-checkpoints",
        dest="keep_checkpoints",
        type=_positive_int,
        metavar="N",
        help="checkpoints kept on disk, the rollback targets (default 3)",
    )
    parser.add_argument(
        "--sync-interval",
        dest="sync_interval_s",
        type=float,
        help="seconds between this worker's model updates to its peers (default 3)",
    )
    parser.add_argument(
        "--sync-events",
        dest="sync_events",
        type=_positive_int,
        metavar="N",
        help="an update sooner, once this worker applied N events since its last (default 20000)",
    )
    parser.add_argument(
        "--snapshot-interval",
        dest="snapshot_interval_s",
        type=float,
        help="seconds between model snapshots for joining workers (default 300)",
    )
    parser.add_argument("--top-k", dest="top_k", type=int, help="items per score record")
    parser.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        help="most events per micro-batch (default 1000; a batch is what has arrived)",
    )
    parser.add_argument(
        "--batch-wait",
        dest="batch_wait_ms",
        type=int,
        help="milliseconds an idle read waits for the first event of a batch (default 100)",
    )
    parser.add_argument(
        "--no-impressions",
        dest="impressions",
        action="store_false",
        default=None,
        help="the stream has no impressions: sample negatives",
    )
    parser.add_argument(
        "--click-window",
        dest="click_window_s",
        type=float,
        help="seconds of event time a click is attributed to an impression",
    )
    parser.add_argument(
        "--click-wait",
        dest="click_wait_s",
        type=float,
        help="seconds of event time after which an impression without a click "
        "is learned as a negative (default 60; keep it above the usual "
        "click delay and at most the click window)",
    )
    parser.add_argument(
        "--conversion-window",
        dest="conversion_window_s",
        type=float,
        help="seconds of event time a cart/purchase is attributed to a click",
    )
    parser.add_argument(
        "--dedupe-events",
        dest="dedupe_events",
        type=int,
        metavar="N",
        help="an event_id seen within the last N applied events is a duplicate "
        "(default 200000, ~29 MB)",
    )
    parser.add_argument(
        "--max-skew",
        dest="max_skew_s",
        type=float,
        metavar="S",
        help="seconds an event may be stamped ahead of event time; a later ts is "
        "clamped (default 300)",
    )
    parser.add_argument(
        "--init-from",
        dest="init_from",
        type=Path,
        metavar="CHECKPOINT",
        help="a new shop: without a checkpoint of its own, start the model from the shared "
        "layers and content rows of the learner in this checkpoint (another shop's worker's), "
        "never its user or item rows (env RECSTREAM_INIT_FROM)",
    )
    parser.add_argument(
        "--demand-horizon",
        dest="demand_horizon_s",
        type=float,
        metavar="S",
        help="item demand forecasts purchases and carts over the next S seconds of event "
        "time, published to the demand topic (default 3600; 0: no demand)",
    )
    parser.add_argument(
        "--predictions-log",
        dest="predictions_log",
        type=Path,
        metavar="PATH",
        help="append every labelled prediction (event ts, task, label, prediction) to this "
        "binary file, for AUC pooled over workers (env RECSTREAM_PREDICTIONS_LOG)",
    )
    add_model_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the worker's model (``recstream demo`` passes them on to its worker)."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--towers",
        choices=TOWERS,
        help="shared layers of the multi-task net (default shared_bottom; env RECSTREAM_TOWERS)",
    )
    group.add_argument(
        "--task-weights",
        dest="task_weights",
        type=_task_weights,
        metavar="CLICK,CART,PURCHASE",
        help="training weights of the task losses, not the ranking weights of the score "
        "(default 1,1,1; env RECSTREAM_TASK_WEIGHTS)",
    )
    group.add_argument(
        "--task-weighting",
        dest="task_weighting",
        choices=TASK_WEIGHTINGS,
        help="'uncertainty' learns adaptive weights (Kendall et al. 2018) on top of the task "
        "weights (default fixed; env RECSTREAM_TASK_WEIGHTING)",
    )
    group.add_argument(
        "--ranking-objective",
        dest="ranking_objective",
        choices=OBJECTIVES,
        help="'weighted' ranks by the ranking weights, 'revenue' by p_purchase x price "
        "(default weighted; env RECSTREAM_RANKING_OBJECTIVE)",
    )
    group.add_argument(
        "--ranking-weights",
        dest="ranking_weights",
        type=_ranking_weights,
        metavar="CLICK,CART,PURCHASE,VALUE",
        help="weights of the score: p_click, p_cart, p_purchase and p_purchase x price "
        "(default 1,4,16,0; compare settings with 'bench pareto'; env RECSTREAM_RANKING_WEIGHTS)",
    )
    group.add_argument(
        "--torch-threads",
        dest="torch_threads",
        type=_positive_int,
        metavar="N",
        help="PyTorch intra-op threads of the model (default 1; env RECSTREAM_TORCH_THREADS)",
    )


def _ranking_weights(text: str) -> tuple[float, float, float, float]:
    try:
        return parse_ranking_weights(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _task_weights(text: str) -> tuple[float, float, float]:
    try:
        return parse_task_weights(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"seconds above 0 (or 'inf'), not {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, not {text!r}")
    return value


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that choose an event source: the simulator, a real log or a recording."""
    parser.add_argument(
        "--source",
        default="sim",
        help="'sim' for the simulated shop, or the path of a CSV log or of a recording "
        "(JSON lines of wire records)",
    )
    parser.add_argument(
        "--format",
        choices=["rees46", "taobao", "recstream"],  # producers.replay.FORMATS
        help="format of the file: a CSV log or our recording (guessed from its first line "
        "if omitted)",
    )
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="number of events (default: 200,000 for sim, all for a log)",
    )
    parser.add_argument("--seed", type=int, default=7, help="simulator seed")
    parser.add_argument(
        "--no-impressions",
        dest="impressions",
        action="store_false",
        help="simulator: do not put impression events on the wire; bench quality on a "
        "recording: it has none, sample negatives (default: any impression in it says it has)",
    )


class RecstreamError(RuntimeError):
    """A failure the user can fix; printed without a traceback."""


def run_broker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.broker import BrokerError
    from streams.connection import connect, stop_on_signals

    try:
        with connect(dataclasses.replace(settings, broker=None), port=args.port) as bootstrap:
            print(
                f"recstream broker ready at {bootstrap} (topics: "
                f"{', '.join(settings.topics.all())}); Ctrl-C to stop",
                flush=True,
            )
            with stop_on_signals() as stop:
                stop.wait()
    except BrokerError as err:
        raise RecstreamError(str(err)) from err
    return 0


def open_source(
    args: argparse.Namespace,
) -> tuple[Iterable[Event | CatalogItem], int | None, object]:
    """The records of the chosen source, how many events to expect, and its stats holder.

    A log or a recording is replayed by :func:`producers.replay.replay`; a
    recording as it was recorded (``--no-impressions`` does not filter it).
    """
    if args.source == "sim":
        from producers.simulator import Shop, ShopConfig

        events = args.events if args.events is not None else ShopConfig().events
        shop = Shop(ShopConfig(seed=args.seed, events=events, impressions=args.impressions))
        return shop.records(), events, shop
    from producers.replay import replay

    try:
        log = replay(args.source, args.format)
    except (OSError, ValueError) as err:
        raise RecstreamError(f"cannot replay {args.source}: {err}") from err
    return log, args.events, log


def run_produce(args: argparse.Namespace, settings: Settings) -> int:
    from producers.client import BrokerUnavailable, EventPublisher
    from streams.broker import BrokerError
    from streams.connection import connect, stop_on_signals
    from streams.progress import progress_bar, stderr

    records, expected, source = open_source(args)
    if args.wall_clock:
        from producers.simulator import on_wall_clock

        records = on_wall_clock(records)
    counts_rows = hasattr(source, "stats")  # a replay counts rows as it goes: keep it here
    try:
        with (
            connect(settings) as bootstrap,
            EventPublisher(
                bootstrap,
                settings.topics.events,
                settings.topics.items,
                rate=args.rate,
                client_config=settings.kafka_client_config(),
            ) as publisher,
            stop_on_signals() as stop,
            progress_bar("produce", expected) as advance,
        ):
            done = [0]

            def on_progress(events: int, _items: int) -> None:
                advance(events - done[0])
                done[0] = events

            report = publisher.publish(
                records,
                max_events=args.events,
                stop=stop,
                on_progress=on_progress,
                encode_in_subprocess=not counts_rows,
            )
    except (BrokerError, BrokerUnavailable) as err:
        raise RecstreamError(str(err)) from err
    if counts_rows:
        stderr.print(f"source: {source.stats.summary()}")
    print(report.summary(), flush=True)
    return 0 if report.events_failed == 0 and report.items_failed == 0 else 1


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.broker import BrokerError
    from streams.checkpoint import CheckpointError
    from streams.worker import run_worker as run

    try:
        return run(settings)
    except (BrokerError, CheckpointError, ValueError) as err:
        raise RecstreamError(str(err)) from err


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.broker import BrokerError
    from streams.demo import DemoOptions
    from streams.demo import run_demo as run

    options = DemoOptions(
        duration_s=args.duration,
        rate=args.rate,
        report=args.report,
        metrics_port=args.metrics_port,
        seed=args.seed,
        impressions=args.impressions,
        out_dir=args.out,
        workers=args.workers,
    )
    try:
        report = run(settings, options)
    except (BrokerError, RuntimeError) as err:
        raise RecstreamError(str(err)) from err
    print(json.dumps(report, indent=2))
    return 0


def run_scores(args: argparse.Namespace, settings: Settings) -> int:
    from streams.connection import stop_on_signals
    from streams.score_watch import ScoreWatcher

    if not settings.broker:
        raise RecstreamError("scores needs --broker HOST:PORT (or RECSTREAM_BROKER)")

    def show(record: dict) -> None:
        print(json.dumps(record, separators=(",", ":")), flush=True)

    with (
        stop_on_signals() as stop,
        ScoreWatcher(
            settings.broker,
            settings.topics.scores,
            from_beginning=args.from_beginning,
            user=args.user,
            on_record=show,
            client_config=settings.kafka_client_config(),
        ),
    ):
        stop.wait()
    return 0


def run_erase(args: argparse.Namespace, settings: Settings) -> int:
    send_control(settings, [Command("erase_user", user_id=user) for user in args.users])
    print(f"erasure of {len(args.users)} user(s) sent to {settings.topics.control}", flush=True)
    return 0


def run_model_list(args: argparse.Namespace, settings: Settings) -> int:
    from streams.checkpoint import CheckpointStore
    from streams.model_ops import list_models, table

    store = CheckpointStore(settings.checkpoint_dir, owner=settings.topics.events)
    models = list_models(store)
    if not models:
        raise RecstreamError(f"no checkpoints of {settings.topics.events} in {store.directory}")
    if args.json:
        for model in models:
            print(json.dumps(model.to_json()), flush=True)
    else:
        print(table(models), flush=True)
    return 0


def run_model_command(args: argparse.Namespace, settings: Settings) -> int:
    version = getattr(args, "version", None)
    if version is not None and args.checkpoint_dir is not None:
        from streams.checkpoint import CheckpointStore
        from streams.model_ops import find_model

        store = CheckpointStore(args.checkpoint_dir, owner=settings.topics.events)
        if find_model(store, version) is None:
            raise RecstreamError(f"no checkpoint in {store.directory} holds model {version}")
    send_control(settings, [Command(args.model, version=version)])
    print(f"{args.model} sent to {settings.topics.control}", flush=True)
    return 0


def send_control(settings: Settings, commands: list[Command]) -> None:
    """Write operator commands to the control topic of ``--broker``."""
    from kafka.errors import KafkaError

    from streams.control import send_commands

    if not settings.broker:
        raise RecstreamError("needs the workers' cluster: --broker HOST:PORT (or RECSTREAM_BROKER)")
    try:
        send_commands(
            settings.broker, settings.topics.control, commands, **settings.kafka_client_config()
        )
    except KafkaError as err:
        raise RecstreamError(f"could not write to {settings.topics.control}: {err}") from err


def run_bench_quality(args: argparse.Namespace, settings: Settings) -> int:
    from streams.bench import quality as bench_quality

    try:
        report = bench_quality.run(bench_quality.options_from_args(args))
    except (OSError, ValueError) as err:
        raise RecstreamError(str(err)) from err
    print(json.dumps(report, indent=2))
    return 0


def run_bench_transfer(args: argparse.Namespace, settings: Settings) -> int:
    from streams.bench import transfer as bench_transfer

    try:
        report = bench_transfer.run(
            bench_transfer.TransferOptions(
                seeds=args.seeds,
                events=args.events,
                batch_size=args.batch_size,
                report=args.report,
                plot=args.plot,
            )
        )
    except (OSError, ValueError) as err:
        raise RecstreamError(str(err)) from err
    print(json.dumps(report, indent=2))
    return 0


def run_bench_pareto(args: argparse.Namespace, settings: Settings) -> int:
    from streams.bench import pareto as bench_pareto
    from streams.progress import stderr

    report = bench_pareto.run(
        bench_pareto.ParetoOptions(
            seed=args.seed,
            events=args.events,
            impressions=args.impressions,
            batch_size=args.batch_size,
            report=args.report,
            plot=args.plot,
        )
    )
    print(json.dumps(report, indent=2))
    bench_pareto.print_front(
        report, lambda text: stderr.print(text, markup=False, highlight=False, soft_wrap=True)
    )
    return 0


def run_bench_throughput(args: argparse.Namespace, settings: Settings) -> int:
    from streams.bench import kafka as bench_kafka
    from streams.bench import throughput as bench_throughput
    from streams.progress import stderr

    if args.kafka:
        report = bench_kafka.run(
            bench_kafka.KafkaBenchOptions(
                events=args.events,
                seed=args.seed,
                runs=args.runs,
                report=args.report,
                plot=args.plot,
                tansu_bin=settings.tansu_bin,
            )
        )
        bench_kafka.print_summary(report, stderr.print)
        print(json.dumps(report, indent=2))
        return 0
    options = bench_throughput.ThroughputOptions(
        events=args.events, batch=args.batch, seed=args.seed, report=args.report, plot=args.plot
    )
    report = bench_throughput.run(options)
    bench_throughput.print_summary(report, stderr.print)
    print(json.dumps(report, indent=2))
    return 0


def run_bench_faults(args: argparse.Namespace, settings: Settings) -> int:
    from streams.bench import faults as bench_faults
    from streams.progress import stderr

    options = bench_faults.options_with(
        bench_faults.FaultOptions(
            log=lambda text: stderr.print(text, markup=False, highlight=False)
        ),
        faults=args.faults,
        events=args.events,
        rate=args.rate,
        kills=args.kills,
        seed=args.seed,
        dedupe_events=args.dedupe_events,
        parallel=args.parallel,
        auc_events=args.auc_events,
        auc_seeds=args.auc_seeds,
        workdir=args.workdir,
        report=args.report,
    )
    report = bench_faults.run(options)
    print(bench_faults.table(report), flush=True)
    return 0 if all(row.get("ok", True) for row in report["faults"]) else 1


def run_bench_scale(args: argparse.Namespace, settings: Settings) -> int:
    from streams.bench import scale as bench_scale

    options = bench_scale.ScaleOptions(
        workers=args.workers,
        events=args.events,
        rounds=args.rounds,
        seed=args.seed,
        timeout_s=args.timeout,
        report=args.report,
        plot=args.plot,
        workdir=args.workdir,
        settings=settings,
    )
    return _run_workers_bench(bench_scale, options)


def run_bench_handover(args: argparse.Namespace, settings: Settings) -> int:
    from streams.bench import handover as bench_handover

    options = bench_handover.HandoverOptions(
        events=args.events,
        seed=args.seed,
        rate=args.rate,
        kill_at=args.kill_at,
        join_at=args.join_at,
        join_events=args.join_events,
        timeout_s=args.timeout,
        report=args.report,
        plot=args.plot,
        workdir=args.workdir,
        settings=settings,
    )
    return _run_workers_bench(bench_handover, options)


def _run_workers_bench(bench: ModuleType, options: Any) -> int:
    """Run a bench that starts its own broker and workers (a module with ``run`` and
    ``table``); print its table. A broker or worker that fails is a clear error."""
    from streams.broker import BrokerError

    try:
        report = bench.run(options)
    except (BrokerError, RuntimeError) as err:
        raise RecstreamError(str(err)) from err
    print(bench.table(report), flush=True)
    return 0
