"""``recstream bench throughput``: what one worker can apply per second, and where the time goes.

The worker's whole job on a batch, without Kafka: the demo's simulated shop
(impressions on, conversions within seconds) is encoded to the wire format
beforehand, then fed to :class:`~streams.pipeline.Pipeline` in batches of
``--batch`` messages, as ``stream.take()`` would hand them over. Timed per
batch: the update (decode, labels, score new samples, learn, quality) and the
ranking of every user with a funnel event in the batch (candidates, scoring,
top-K). Also timed: one checkpoint's state (what the background writer
serialises) and its size on disk.

The figures show the headroom against the demo's rate: at 2,000 events/s a
worker that applies 7,000 events/s on one core is busy 30% of the time. The
per-segment rows show how the cost grows as users' histories and candidate
pools fill. ``--plot`` draws batch time over the stream.

Example
-------
>>> report = run(ThroughputOptions(events=2_000, batch=200, progress=False))
>>> report["events"], report["batches"], report["events_per_s"] > 0
(2000, 10, True)
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from online_models.learner import mtl
from producers.contract import CatalogItem, encode_catalog_item, encode_event
from producers.simulator import Shop, ShopConfig
from streams.checkpoint import CheckpointStore
from streams.demo import DELAY_SCALE, EVENTS_PER_SESSION, DemoOptions
from streams.gc_freeze import GcFreezer
from streams.pipeline import Pipeline, RawMessage
from streams.progress import optional_progress

SEGMENTS = 5
"""The stream is cut into this many segments for the growth rows."""


@dataclass(frozen=True)
class ThroughputOptions:
    """How much stream, in which batches, and where the figures go."""

    events: int = 100_000
    batch: int = 200
    seed: int = 7
    report: Path | None = None
    plot: Path | None = None
    progress: bool = True


def demo_stream(events: int, seed: int) -> tuple[list[RawMessage], list[RawMessage]]:
    """The demo's shop as wire messages: (catalog records, events), in order."""
    demo = DemoOptions()
    shop = Shop(
        ShopConfig(
            seed=seed,
            events=events,
            impressions=True,
            sessions_per_second=demo.rate / EVENTS_PER_SESSION,
            delay_scale=DELAY_SCALE,
        )
    )
    catalog: list[RawMessage] = []
    stream: list[RawMessage] = []
    for record in shop.records():
        if isinstance(record, CatalogItem):
            catalog.append(
                RawMessage(0, len(catalog), record.item_id.encode(), encode_catalog_item(record))
            )
            continue
        stream.append(RawMessage(0, len(stream), record.user_id.encode(), encode_event(record)))
        if len(stream) >= events:
            break
    return catalog, stream


def run(options: ThroughputOptions) -> dict[str, Any]:
    """Feed the stream through a pipeline; return (and write, if asked) the figures."""
    catalog, stream = demo_stream(options.events, options.seed)
    settings = DemoOptions().worker_settings()  # the worker's windows as the demo sets them
    pipeline = Pipeline(mtl(settings.model_config()), labels=settings.label_config())
    pipeline.process_catalog(catalog, "items")
    batches = [stream[i : i + options.batch] for i in range(0, len(stream), options.batch)]
    total, update, ranked = np.zeros(len(batches)), np.zeros(len(batches)), np.zeros(len(batches))
    freezer = GcFreezer()  # as the worker does
    with optional_progress(options.progress, "apply batches", len(stream)) as advance:
        for n, batch in enumerate(batches):
            started = time.perf_counter()
            result = pipeline.process_events(batch)
            total[n] = time.perf_counter() - started
            update[n] = result.update_seconds
            ranked[n] = len(result.scores)
            freezer.tick()
            advance(len(batch))
    report = {
        "events": len(stream),
        "batches": len(batches),
        "batch_size": options.batch,
        "events_per_s": round(float(len(stream) / total.sum()), 1),
        "batch_ms": _quantiles(total),
        "update_ms": _quantiles(update),
        "rank_ms": _quantiles(total - update),
        "users_ranked_per_batch": round(float(ranked.mean()), 2),
        "segments": _segments(total, update, options.batch),
        "checkpoint": _checkpoint_figures(pipeline),
    }
    if options.report:
        options.report.write_text(json.dumps(report, indent=2) + "\n")
    if options.plot:
        plot_batches(total, update, options.batch, options.plot)
    return report


def _quantiles(seconds: np.ndarray) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(seconds, q)) * 1000, 2) for q in (50, 90, 99)}


def _segments(total: np.ndarray, update: np.ndarray, batch: int) -> list[dict[str, float]]:
    rows = []
    for part, part_update in zip(
        np.array_split(total, SEGMENTS), np.array_split(update, SEGMENTS), strict=True
    ):
        rows.append(
            {
                "events_per_s": round(batch * len(part) / part.sum(), 1),
                "update_ms": round(float(part_update.mean()) * 1000, 2),
                "rank_ms": round(float((part - part_update).mean()) * 1000, 2),
            }
        )
    return rows


def _checkpoint_figures(pipeline: Pipeline) -> dict[str, float]:
    started = time.perf_counter()
    state = pipeline.state_dict()
    state_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        path = CheckpointStore(directory, owner="events").save(
            {"pipeline": state}, dict(pipeline.offsets)
        )
        save_s = time.perf_counter() - started
        size = path.stat().st_size
    return {
        "state_ms": round(state_s * 1000, 1),
        "save_ms": round(save_s * 1000, 1),
        "megabytes": round(size / 1e6, 1),
    }


def plot_batches(total: np.ndarray, update: np.ndarray, batch: int, path: Path) -> None:
    """Batch time over the stream, split into update and ranking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(total)) * batch
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(x, update * 1000, lw=0.6, label="update (decode, labels, learn)")
    ax.plot(x, (total - update) * 1000, lw=0.6, label="ranking (candidates, score, top-K)")
    ax.plot(x, total * 1000, lw=0.8, color="black", label="batch")
    ax.set_xlabel("events")
    ax.set_ylabel(f"ms per batch of {batch}")
    ax.set_title("recstream worker pipeline: time per batch")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_summary(report: dict[str, Any], write: Callable[[str], None] = print) -> None:
    """The figures a person reads first."""
    write(
        f"{report['events']:,} events in batches of {report['batch_size']}: "
        f"{report['events_per_s']:,.0f} events/s on one core"
    )
    for name in ("batch_ms", "update_ms", "rank_ms"):
        q = report[name]
        write(f"  {name:<10} p50 {q['p50']:7.2f}  p90 {q['p90']:7.2f}  p99 {q['p99']:7.2f}")
    rows = ", ".join(f"{row['events_per_s']:,.0f}" for row in report["segments"])
    write(f"  events/s per fifth of the stream: {rows}")
    c = report["checkpoint"]
    write(
        f"  checkpoint: state {c['state_ms']:.0f} ms, save {c['save_ms']:.0f} ms, "
        f"{c['megabytes']:.0f} MB"
    )
