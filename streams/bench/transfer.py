"""``recstream bench transfer``: does a new shop learn faster from another shop's learner?

Per seed, two shops of one simulated world (:class:`~producers.simulator.ShopConfig`'s
``shop``: the same categories, brands, price levels and tastes of segments,
other users and items). Shop A (``shop=0``) is the quality bench's stream,
its taste shift at 60% of the events; ``mtl`` learns it to the end. Shop B
(``shop=1``) opens afterwards, in the season A ended in: its taste shift
comes before its first event (the world's shift is the same in every shop,
so B's trends are A's at its end), with no shift later. ``mtl`` then runs
over B's stream twice, on the same micro-batches and labels
(:func:`~streams.bench.quality.build_stream`, :func:`~streams.bench.quality.run_model`):
started from A's learner (:func:`online_models.transfer.init_from`: shared
layers, content rows, never a user's or an item's row) and from scratch.

Reported per window of B's events, per task (samples that appeared in the
window, with their final labels): ``transfer_auc``, ``scratch_auc``,
``difference`` (transfer minus scratch) and ``difference_se``, its paired
DeLong standard error over the same samples
(:func:`~online_models.evaluation.paired_auc_difference`). Windows: ``early``,
B's first tenth of the events (0-20,000 of 200,000), and ``late``, its last
tenth (180,000-200,000). The report's ``early`` and ``late`` are means over
the seeds, the standard error of a mean of independent seeds being
``sqrt(sum se^2) / n``; ``per_seed`` has each seed's. ``--plot`` draws B's
rolling AUC with and without transfer.

Example
-------
>>> report = run(TransferOptions(seeds=(7,), events=3_000, progress=False))
>>> sorted(report["early"]["click"]), report["windows"]
(['difference', 'difference_se', 'positives', 'samples', 'scratch_auc', 'transfer_auc'], \
{'early': [0, 300], 'late': [2700, 3000]})
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from online_models.base import TASKS
from online_models.evaluation import SampleLog, auc, paired_auc_difference, rolling_auc
from online_models.learner import mtl
from online_models.transfer import init_from
from streams.bench.quality import QualityOptions, build_stream, run_model
from streams.progress import optional_progress

WINDOW_SHARE = 0.1
"""Each window is this share of B's events: the first (``early``) and the last (``late``)."""
SHOP_A, SHOP_B = 0, 1
FIGURES = ("transfer_auc", "scratch_auc", "difference")
"""Figures averaged over the seeds (``difference_se`` is combined as a standard error)."""


@dataclass(frozen=True)
class TransferOptions:
    """Seeds, events per shop, and where to write the report and the plot."""

    seeds: tuple[int, ...] = (7, 11, 13)
    events: int = 200_000
    batch_size: int = 2048
    report: Path | None = None
    plot: Path | None = None
    progress: bool = True


def run(options: TransferOptions) -> dict[str, Any]:
    """Every seed's three runs; write the report (and plot); return the report."""
    if not options.seeds or options.events < 10:
        raise ValueError("bench transfer needs at least one seed and 10 events")
    span = max(1, round(WINDOW_SHARE * options.events))
    windows = {"early": (0, span), "late": (options.events - span, options.events)}
    per_seed: dict[str, Any] = {}
    curves: dict[int, tuple[np.ndarray, np.ndarray, SampleLog]] = {}
    for seed in options.seeds:
        transfer, scratch, log = _shop_b_runs(options, seed)
        per_seed[str(seed)] = {
            name: window_comparison(transfer, scratch, log, *bounds)
            for name, bounds in windows.items()
        }
        if options.plot is not None:
            curves[seed] = (transfer, scratch, log)
    report: dict[str, Any] = {
        "events": options.events,
        "seeds": list(options.seeds),
        "windows": {name: list(bounds) for name, bounds in windows.items()},
        **{name: _mean_over_seeds([per_seed[s][name] for s in per_seed]) for name in windows},
        "per_seed": per_seed,
    }
    report = _finite(report)
    if options.report is not None:
        options.report.write_text(json.dumps(report, indent=2) + "\n")
    if options.plot is not None:
        plot_transfer(curves, windows, options.plot)
    return report


def _shop_b_runs(options: TransferOptions, seed: int) -> tuple[np.ndarray, np.ndarray, SampleLog]:
    """Shop A's learner, then B's scores with and without it, and B's sample log."""
    shop_a = QualityOptions(
        events=options.events,
        seed=seed,
        shop=SHOP_A,
        batch_size=options.batch_size,
        models=("mtl",),
        progress=options.progress,
        topk=False,
    )
    stream = build_stream(shop_a)
    learner = mtl()
    with optional_progress(options.progress, f"seed {seed}: mtl, shop A", stream.events) as step:
        run_model(learner, stream, advance=step)
    state = learner.state_dict()
    del stream, learner
    stream = build_stream(replace(shop_a, shop=SHOP_B, drift_at=0.0))  # opens after A's shift
    scores = {}
    for name in ("transfer", "scratch"):
        learner = mtl()
        if name == "transfer":
            init_from(learner, state)
        label = f"seed {seed}: mtl, shop B, {name}"
        with optional_progress(options.progress, label, stream.events) as step:
            scores[name] = run_model(learner, stream, advance=step).scores
    return scores["transfer"], scores["scratch"], stream.log


def window_comparison(
    transfer: np.ndarray, scratch: np.ndarray, log: SampleLog, start: int, end: int
) -> dict[str, dict[str, float]]:
    """Per task, both AUCs and their paired difference over samples that appeared in
    ``[start, end)`` of the stream.

    >>> from online_models.labels import TrackedSample
    >>> log = SampleLog()
    >>> made = [TrackedSample("u", f"i{k}", 0, key=k, click=float(k % 2), cart=0.0,
    ...                       purchase=0.0) for k in range(6)]
    >>> log.created(made[:4], 0, [False] * 4); log.created(made[4:], 9, [False] * 2)
    >>> log.labelled(made, 9)
    >>> good = np.array([[k % 2, 0, 0] for k in range(6)], dtype=float)
    >>> figures = window_comparison(good, 1 - good, log, 0, 5)["click"]
    >>> figures["transfer_auc"], figures["scratch_auc"], figures["difference"], figures["samples"]
    (1.0, 0.0, 1.0, 4)
    """
    n = len(log)
    inside = (log.position[:n] >= start) & (log.position[:n] < end)
    out = {}
    for task, name in enumerate(TASKS):
        mask = inside & ~np.isnan(log.labels[:n, task])
        labels = log.labels[:n][mask, task]
        a, b = transfer[:n][mask, task], scratch[:n][mask, task]
        difference, se = paired_auc_difference(a, b, labels)
        out[name] = {
            "transfer_auc": auc(a, labels),
            "scratch_auc": auc(b, labels),
            "difference": difference,
            "difference_se": se,
            "samples": int(mask.sum()),
            "positives": int(labels.sum()),
        }
    return out


def _mean_over_seeds(seeds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per task: the seeds' mean figures; the SE of the mean difference, sqrt(sum se^2) / n."""
    out = {}
    for task in TASKS:
        rows = [seed[task] for seed in seeds]
        n = len(rows)
        figures: dict[str, float] = {k: float(np.mean([r[k] for r in rows])) for k in FIGURES}
        figures["difference_se"] = math.sqrt(sum(r["difference_se"] ** 2 for r in rows)) / n
        figures["samples"] = sum(r["samples"] for r in rows)
        figures["positives"] = sum(r["positives"] for r in rows)
        out[task] = figures
    return out


def _finite(value: Any) -> Any:
    """NaN (an AUC without both classes) as ``null``: strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def plot_transfer(
    curves: dict[int, tuple[np.ndarray, np.ndarray, SampleLog]],
    windows: dict[str, tuple[int, int]],
    path: Path,
) -> None:
    """One panel per task: B's rolling AUC per seed, with transfer (solid) and without (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(TASKS), 1, figsize=(11, 9), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for task, (axis, name) in enumerate(zip(axes, TASKS, strict=True)):
        for k, (seed, (transfer, scratch, log)) in enumerate(curves.items()):
            labelled = int((~np.isnan(log.labels[: len(log), task])).sum())
            window = max(500, labelled // 40)
            for scores, style, kind in ((transfer, "-", "transfer"), (scratch, "--", "scratch")):
                positions, values = rolling_auc(scores, log, task, window)
                colour = colours[k % len(colours)]
                axis.plot(
                    positions,
                    values,
                    style,
                    color=colour,
                    linewidth=1.1,
                    label=f"seed {seed}, {kind}",
                )
        for start, end in windows.values():
            axis.axvspan(start, end, color="grey", alpha=0.12)
        axis.set_ylabel(f"{name} AUC (rolling)")
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower right", ncol=2, fontsize=8)
    axes[0].set_title("Shop B: mtl from shop A's learner (solid) and from scratch (dashed)")
    axes[-1].set_xlabel("event index of shop B (shaded: the report's windows)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
