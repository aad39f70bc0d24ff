"""``recstream bench pareto``: ranking weights chosen on evidence, not by taste.

A shop trades clicks against purchases and revenue when it ranks: the
ranking weights of :class:`~streams.ranking.RankingConfig` (``click, cart,
purchase, value``; the worker's ``--ranking-weights``) say how. This bench
replays one simulated stream through the multi-task model, test-then-train
as ``recstream bench quality`` does, and before each micro-batch ranks the
candidates of the users about to act (the lists of :mod:`streams.bench.topk`:
the worker's candidate pool, the model as it was before the batch) once per
setting of :data:`GRID`, from the same predictions. Each list (its first
:data:`~streams.bench.topk.K` items) is measured under the simulator's truth
for its user, device and time:

- ``clicks``: expected clicks, the sum of the items' ``p_click``;
- ``purchases``: expected purchases, ``p_click * p_cart|click * p_purchase|cart``;
- ``revenue``: expected revenue, each item's expected purchases times its
  price times the quantity the user is expected to buy
  (:meth:`~producers.simulator.Shop.expected_quantity`).

Means over the lists served before every judged click, cart and purchase of
the second half (the top-K section's events), with bootstrap standard errors
over users (``*_se``). A setting is on the ``front`` when no other setting
is at least as good on all three objectives and better on one. Neighbours on
the front (ordered by clicks) are told apart by their paired difference on
the same lists: ``separation`` is the largest ``|difference| / SE`` over the
three objectives (above 2: a real difference). ``default`` is the worker's
default setting, with ``on_front``.

The value weight is given in purchases: ``value = v`` weighs a list's
expected revenue (``p_purchase`` times the model's expected order value) as
``v`` purchases of one unit at the catalog's mean price (the bench divides
``v`` by that mean for the ranker; the report's ``price_scale``).

Example
-------
>>> values = np.array([[3.0, 0.5, 10.0], [2.0, 0.6, 12.0], [2.0, 0.4, 9.0]])
>>> non_dominated(values).tolist()
[0, 1]
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise, product
from pathlib import Path
from typing import Any

import numpy as np

from online_models.base import Learner
from streams.bench.quality import QualityOptions, Step, build_stream, run_model
from streams.bench.topk import BOOTSTRAP_RESAMPLES, K, TopKEvaluation, bootstrap_se
from streams.progress import optional_progress
from streams.ranking import Ranker, RankingConfig, per_user

OBJECTIVES = ("clicks", "purchases", "revenue")
GRID: tuple[tuple[float, float, float, float], ...] = tuple(
    (1.0, cart, purchase, value)
    for cart, purchase, value in product(
        (0.0, 4.0), (0.0, 4.0, 16.0, 64.0, 256.0), (0.0, 16.0, 64.0)
    )
)
"""The settings measured, ``(click, cart, purchase, value)``: 30, the default among them."""
DEFAULT = (*RankingConfig().weights, RankingConfig().value_weight)


@dataclass(frozen=True)
class ParetoOptions:
    """The simulated stream replayed (as ``bench quality``'s) and where to write."""

    seed: int = 7
    events: int = 200_000
    impressions: bool = True
    batch_size: int = 2048
    report: Path | None = None
    plot: Path | None = None
    progress: bool = True


class PolicyLists:
    """Before each micro-batch: every setting's lists for the batch's judged events, measured.

    ``values[s]`` holds ``(clicks, purchases, revenue)`` per judged event for
    setting ``s`` of ``grid``; ``users`` the event's user.
    """

    def __init__(self, topk: TopKEvaluation, grid: Sequence[tuple[float, ...]]) -> None:
        self.topk = topk
        self.grid = list(grid)
        self.price_scale: float | None = None
        self.rankers: list[Ranker] = []
        self.values: list[list[tuple[float, float, float]]] = [[] for _ in self.grid]
        self.users: list[str] = []
        self.seconds = 0.0

    def before_step(self, model: Learner, step: Step) -> None:
        """The mtl run's hook: rank and measure before ``step`` is learned."""
        served = self.topk.served_for(model, step)
        if served is None:
            return
        start = time.perf_counter()
        block = served.block
        if not self.rankers:
            self._make_rankers([p for p in block.prices if p is not None])
        probabilities, values = model.predict_block_with_values(block)
        cold_items = np.fromiter(map(model.is_cold, block.item_ids), bool, len(block.item_ids))
        cold = cold_items[block.pair_item]
        prices = np.array([p or 0.0 for p in block.prices])[block.pair_item]
        lists = [  # per setting, per user of the block: its chosen pairs, best first
            per_user(block, ranker.choose(block, probabilities, cold, values)[0])
            for ranker in self.rankers
        ]
        place = {user: n for n, user in enumerate(block.user_ids)}
        for number, (begin, _end), truth in zip(
            served.events, served.pairs, served.truth, strict=True
        ):
            user = self.topk.users[number]
            self.users.append(user)
            n = place.get(user)
            for s, chosen_by_user in enumerate(lists):
                pairs = chosen_by_user[n][:K] if n is not None else np.zeros(0, np.int64)
                rows = truth[pairs - begin]
                items = [block.item_ids[i] for i in block.pair_item[pairs]]
                quantity = self.topk.shop.expected_quantity([user] * len(items), items)
                self.values[s].append(
                    (
                        float(rows[:, 0].sum()),
                        float(rows[:, 2].sum()),
                        float((rows[:, 2] * prices[pairs] * quantity).sum()),
                    )
                )
        self.seconds += time.perf_counter() - start

    def _make_rankers(self, prices: list[float]) -> None:
        """One ranker per setting; the value weight in purchases at the mean price."""
        self.price_scale = float(np.mean(prices)) if prices else 1.0
        base = RankingConfig()
        self.rankers = [
            Ranker(replace(base, weights=(c, a, p), value_weight=v / self.price_scale))
            for c, a, p, v in self.grid
        ]

    def report(self, seed: int = 0) -> dict[str, Any]:
        """Every setting's means and SEs, the front with its separations, the default."""
        users = np.asarray(self.users, dtype=object)
        arrays = [np.asarray(v, dtype=np.float64).reshape(-1, 3) for v in self.values]
        means = np.array([a.mean(axis=0) for a in arrays])
        settings = []
        for weights, values, mean in zip(self.grid, arrays, means, strict=True):
            se = bootstrap_se(values, users, seed=seed)
            entry: dict[str, Any] = {"weights": list(weights)}
            for o, name in enumerate(OBJECTIVES):
                entry[name] = float(mean[o])
                entry[f"{name}_se"] = float(se[o])
            settings.append(entry)
        front = sorted(non_dominated(means).tolist(), key=lambda s: -means[s, 0])
        for before, after in pairwise(front):
            diff = arrays[before] - arrays[after]
            se = bootstrap_se(diff, users, seed=seed)
            ratio = np.abs(diff.mean(axis=0)) / np.where(se > 0, se, np.nan)
            settings[after]["separation"] = (
                float(np.nanmax(ratio)) if np.isfinite(ratio).any() else None
            )
        default = self.grid.index(DEFAULT)
        return {
            "events": len(self.users),
            "k": K,
            "price_scale": self.price_scale,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "settings": settings,
            "front": [settings[s] for s in front],
            "default": {**settings[default], "on_front": default in front},
            "seconds": self.seconds,
        }


def non_dominated(values: np.ndarray) -> np.ndarray:
    """Rows no other row matches or beats on every column while beating on one (maximising)."""
    at_least = (values[:, None, :] >= values[None, :, :]).all(axis=2)
    better = (values[:, None, :] > values[None, :, :]).any(axis=2)
    dominated = (at_least & better).any(axis=0)
    return np.flatnonzero(~dominated)


def run(options: ParetoOptions) -> dict[str, Any]:
    """Replay the stream through mtl, measure every setting, write the report (and plot)."""
    from online_models.learner import mtl

    quality = QualityOptions(
        source="sim",
        seed=options.seed,
        events=options.events,
        impressions=options.impressions,
        batch_size=options.batch_size,
        models=("mtl",),
        progress=options.progress,
    )
    stream = build_stream(quality)
    policies = PolicyLists(stream.topk, GRID)
    with optional_progress(options.progress, "mtl", stream.events) as advance:
        run_model(mtl(), stream, advance=advance, before_step=policies.before_step)
    report = {
        "source": "sim",
        "seed": options.seed,
        "events": stream.events,
        "impressions": options.impressions,
        **policies.report(seed=options.seed),
    }
    if options.report is not None:
        options.report.write_text(json.dumps(report, indent=2) + "\n")
    if options.plot is not None:
        plot_front(report, options.plot)
    return report


def print_front(report: dict[str, Any], write: Any = print) -> None:
    """The front, best clicks first, and where the default stands."""
    write(
        f"ranking weights (click, cart, purchase, value): {len(report['settings'])} settings, "
        f"{len(report['front'])} on the front, over {report['events']:,} lists of {report['k']}"
    )
    write(f"  {'weights':<24}{'clicks':>18}{'purchases':>18}{'revenue':>20}{'separation':>12}")
    for entry in report["front"]:
        write(_row(entry))
    default = report["default"]
    where = "on the front" if default["on_front"] else "dominated"
    write(f"default ({where}):")
    write(_row(default))


def _row(entry: dict[str, Any]) -> str:
    weights = ",".join(f"{w:g}" for w in entry["weights"])
    cells = [f"{entry[o]:.4f}±{entry[o + '_se']:.4f}" for o in OBJECTIVES[:2]]
    revenue = f"{entry['revenue']:.2f}±{entry['revenue_se']:.2f}"
    separation = entry.get("separation")
    apart = "-" if separation is None else f"{separation:.1f}"
    return f"  {weights:<24}{cells[0]:>18}{cells[1]:>18}{revenue:>20}{apart:>12}"


def plot_front(report: dict[str, Any], path: Path) -> None:
    """Expected clicks against purchases per setting (colour: revenue), the front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, front, default = report["settings"], report["front"], report["default"]
    fig, ax = plt.subplots(figsize=(8, 6))
    clicks = [s["clicks"] for s in settings]
    purchases = [s["purchases"] for s in settings]
    dots = ax.scatter(clicks, purchases, c=[s["revenue"] for s in settings], cmap="viridis")
    fig.colorbar(dots, ax=ax, label="expected revenue per list")
    ax.errorbar(
        [s["clicks"] for s in front],
        [s["purchases"] for s in front],
        xerr=[s["clicks_se"] for s in front],
        yerr=[s["purchases_se"] for s in front],
        color="tab:red",
        lw=1,
        ls="none",
        marker="o",
        mfc="none",
        label="on the front (± SE)",
    )
    for entry in front:
        label = ",".join(f"{w:g}" for w in entry["weights"])
        ax.annotate(
            label,
            (entry["clicks"], entry["purchases"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.scatter(
        [default["clicks"]],
        [default["purchases"]],
        marker="*",
        s=250,
        c="black",
        label="default " + ",".join(f"{w:g}" for w in default["weights"]),
    )
    ax.set_xlabel(f"expected clicks per top-{report['k']} list")
    ax.set_ylabel(f"expected purchases per top-{report['k']} list")
    ax.set_title("Ranking weights (click, cart, purchase, value): what each setting earns")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
