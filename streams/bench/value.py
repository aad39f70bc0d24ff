"""Order value judged in ``recstream bench quality``: the report's ``value`` section.

For every purchase with a known price in the second half of the replay (the
events from index ``events // 2`` on), the log value of the order,
``log1p(price * quantity)``, against what was predicted just before its
micro-batch was learned:

- ``mtl_mae_log1p``: the multi-task model's value head
  (:meth:`~online_models.learner.MultiTaskLearner.predict_values`);
- ``item_mean_mae_log1p``: the mean log value of the item's earlier orders;
  an item's first order falls back to its category's mean, then to the
  shop's (what a shop computes without a model);
- ``oracle_mae_log1p`` (the simulator): ``log1p`` of the true expected value,
  price times the shop's expected quantity for that user and item;
- ``volume_blind_mae_log1p`` (the simulator): the best a predictor can do
  knowing every price and each department's true volume but not the
  buyer's: the median (which minimises absolute error) of ``log1p(price *
  quantity)`` over :data:`VOLUME_DRAWS` quantities drawn with the user's
  volume unknown (:meth:`~producers.simulator.Shop.predicted_quantities`);
- ``posterior_mae_log1p`` (the simulator): the same, with the buyer's volume
  drawn given the quantities of its earlier orders (those of earlier
  micro-batches, the whole replay's): the best any learner can do, knowing
  the shop's parameters and learning each buyer from its orders as well as
  anyone could. Most users buy once or twice, so it is far from the oracle.

Each with its standard error (``*_se``: of the mean absolute error over
orders). On the simulator ``revenue_at_k`` and ``price_only_revenue_at_k``
judge the lists: before each micro-batch, the users about to act (the
top-K section's events and candidates) get their candidates ranked by
expected revenue, ``p_purchase`` times the model's expected order value,
and by ``p_purchase`` times the price alone (what the revenue objective was
before the value head); each list's first :data:`~streams.bench.topk.K`
items are worth the simulator's true expected revenue (true purchase
probability times price times expected quantity); the means over lists.

Example
-------
>>> means = RunningMeans()
>>> means.predict("i1", "a.b"), means.add("i1", "a.b", 3.0), means.predict("i2", "a.b")
(0.0, None, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from online_models.base import Learner, Sample
from streams.bench.topk import K, TopKEvaluation
from streams.ranking import Ranker, RankingConfig, per_user

VOLUME_DRAWS = 4_000
"""Quantities drawn per order for the ``volume_blind`` and ``posterior`` predictors' medians."""


class RunningMeans:
    """Mean log value of each item's, each category's and the shop's orders so far."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str | None], list[float]] = {}

    def predict(self, item_id: str, category: str | None) -> float:
        """The item's mean, else its category's, else the shop's (0 before any order)."""
        for key in (("item", item_id), ("category", category), ("shop", None)):
            total = self._sums.get(key)
            if total is not None:
                return total[1] / total[0]
        return 0.0

    def add(self, item_id: str, category: str | None, value: float) -> None:
        """One more order of the item."""
        keys = [("item", item_id), ("shop", None)]
        if category is not None:
            keys.append(("category", category))
        for key in keys:
            total = self._sums.setdefault(key, [0.0, 0.0])
            total[0] += 1.0
            total[1] += value


class ValueEvaluation:
    """The value section: call :meth:`before_step` before each micro-batch is learned."""

    def __init__(self, from_event: int, topk: TopKEvaluation | None = None, shop: Any = None):
        self.from_event = from_event
        self.topk = topk
        self.shop = shop
        self.means = RunningMeans()
        self.errors: dict[str, list[float]] = {
            "mtl": [],
            "item_mean": [],
            "oracle": [],
            "volume_blind": [],
            "posterior": [],
        }
        self.earlier: dict[str, list[tuple[str, int]]] = {}  # the simulator: orders per user
        self.rng = np.random.default_rng(0)
        self.revenue: dict[str, list[float]] = {"value": [], "price_only": []}
        self.ranker = Ranker(RankingConfig(objective="revenue"))

    def before_step(self, model: Learner, step: Any) -> None:
        """Judge the step's orders (then remember them) and, on the simulator, its lists."""
        orders = [s for s in step.learn if s.value is not None]
        if orders and step.position >= self.from_event:
            self._judge_orders(model, orders)
        for order in orders:
            self.means.add(order.item_id, order.category, order.value)
        if self.shop is not None:
            for event in step.events:
                if event.type == "purchase":
                    self.earlier.setdefault(event.user_id, []).append(
                        (event.item_id, event.quantity)
                    )
        if self.topk is not None and self.shop is not None:
            self._judge_lists(model, step)

    def _judge_orders(self, model: Learner, orders: list[Sample]) -> None:
        actual = np.array([s.value for s in orders])
        predict_values = getattr(model, "predict_values", None)
        if predict_values is not None:
            self.errors["mtl"] += np.abs(predict_values(orders) - actual).tolist()
        means = [self.means.predict(s.item_id, s.category) for s in orders]
        self.errors["item_mean"] += np.abs(np.array(means) - actual).tolist()
        if self.shop is not None:
            quantity = self.shop.expected_quantity(
                [s.user_id for s in orders], [s.item_id for s in orders]
            )
            prices = np.array([s.price for s in orders])
            self.errors["oracle"] += np.abs(np.log1p(prices * quantity) - actual).tolist()
            items = [s.item_id for s in orders]
            earlier = [self.earlier.get(s.user_id, []) for s in orders]
            for name, known in (("volume_blind", None), ("posterior", earlier)):
                draws = self.shop.predicted_quantities(items, VOLUME_DRAWS, self.rng, known)
                median = np.median(np.log1p(prices[:, None] * draws), axis=1)
                self.errors[name] += np.abs(median - actual).tolist()

    def _judge_lists(self, model: Learner, step: Any) -> None:
        served = self.topk.served_for(model, step)
        if served is None:
            return
        block = served.block
        probabilities, values = model.predict_block_with_values(block)
        if values is None:
            return
        cold = np.zeros(len(block.pair_item), bool)
        prices = np.array([p or 0.0 for p in block.prices])[block.pair_item]
        place = {user: n for n, user in enumerate(block.user_ids)}
        lists = {
            name: per_user(block, self.ranker.choose(block, probabilities, cold, by)[0])
            for name, by in (("value", values), ("price_only", prices))
        }
        for number, (begin, _end), truth in zip(
            served.events, served.pairs, served.truth, strict=True
        ):
            n = place.get(self.topk.users[number])
            if n is None:
                continue
            for name, by_user in lists.items():
                pairs = by_user[n][:K]
                items = [block.item_ids[i] for i in block.pair_item[pairs]]
                quantity = self.shop.expected_quantity(
                    [self.topk.users[number]] * len(items), items
                )
                worth = truth[pairs - begin, 2] * prices[pairs] * quantity
                self.revenue[name].append(float(worth.sum()))

    def report(self) -> dict[str, Any]:
        """The figures named in the module docstring (those that apply)."""
        out: dict[str, Any] = {"orders": len(self.errors["item_mean"])}
        for name, errors in self.errors.items():
            if errors:
                out[f"{name}_mae_log1p"] = float(np.mean(errors))
                out[f"{name}_mae_log1p_se"] = _se(errors)
        if self.revenue["value"]:
            out["lists"] = len(self.revenue["value"])
            out["revenue_at_k"] = float(np.mean(self.revenue["value"]))
            out["price_only_revenue_at_k"] = float(np.mean(self.revenue["price_only"]))
            difference = np.subtract(self.revenue["value"], self.revenue["price_only"])
            out["revenue_difference_se"] = _se(difference)
        return out


def _se(values: Sequence[float]) -> float:
    """Standard error of the mean (NaN under two values)."""
    if len(values) < 2:
        return math.nan
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))
