"""Rank candidates with the learner and shape each user's top-K as the score contract says.

The joint objective is a weighted mean of the funnel probabilities and the
expected order value, ``(w_click p_click + w_cart p_cart + w_purchase p_purchase
+ w_value p_purchase price) / (w_click + w_cart + w_purchase + w_value)``
(``weights`` and ``value_weight``; ``recstream bench pareto`` measures what
each setting earns), or expected revenue ``p_purchase * price`` alone
(``objective = "revenue"``). ``cold_slots`` of the K places are kept for the
best-rated cold items, so new items reach users before anyone has clicked
them (exploration); a cold item that ranks high on its own merits takes a
normal place.

Example
-------
>>> import numpy as np
>>> from producers.contract import ItemContent
>>> from online_models.base import Learner
>>> class Fixed(Learner):                # any Learner will do
...     name, model_version = "fixed", 7
...     def predict(self, samples, remembered=None):
...         return np.array([[0.5, 0.1, 0.02], [0.2, 0.05, 0.01]])[: len(samples)]
>>> ranker = Ranker(RankingConfig(top_k=2, cold_slots=0))
>>> cands = {"u1": [("i1", ItemContent("a.b", "x", 10.0)), ("i2", ItemContent("a.b", "y", 5.0))]}
>>> records = ranker.rank(Fixed(), cands, {"u1": 1_000}, now_ms=1_100)
>>> [entry["item_id"] for entry in records[0]["items"]], records[0]["model_version"]
(['i1', 'i2'], 7)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from online_models.base import CandidateBlock, Learner
from producers.contract import SCHEMA_VERSION, ItemContent

OBJECTIVES = ("weighted", "revenue")


@dataclass(frozen=True)
class RankingConfig:
    """K, the joint objective and the places kept for cold items."""

    top_k: int = 20
    objective: str = "weighted"
    weights: tuple[float, float, float] = (1.0, 4.0, 16.0)
    value_weight: float = 0.0
    cold_slots: int = 2

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}")
        if not 0 <= self.cold_slots <= self.top_k:
            raise ValueError("cold_slots must be between 0 and top_k")
        every = (*self.weights, self.value_weight)
        if len(self.weights) != 3 or not all(0 <= w < math.inf for w in every) or not any(every):
            raise ValueError(
                "ranking weights are 3 task weights and a value weight, finite, "
                f"non-negative and not all 0, not {every}"
            )


class Ranker:
    """Scores every user's candidates in one learner call and keeps each user's top-K."""

    def __init__(self, config: RankingConfig | None = None) -> None:
        self.config = config or RankingConfig()

    def rank(
        self,
        learner: Learner,
        candidates: Mapping[str, Sequence[tuple[str, ItemContent]]],
        event_ts: Mapping[str, int],
        now_ms: int,
    ) -> list[dict[str, Any]]:
        """One score record per user with candidates (see docs/contracts.md, "Scores").

        An item offered to several users is scored with the content given
        with its last offer.
        """
        users = [user for user, items in candidates.items() if items]
        if not users:
            return []
        block = candidate_block(users, candidates, event_ts)
        return self.rank_block(learner, block, now_ms)

    def rank_block(
        self, learner: Learner, block: CandidateBlock, now_ms: int
    ) -> list[dict[str, Any]]:
        """One score record per user of ``block``, its users and candidates scored at once.

        (:meth:`~online_models.base.Learner.predict_block`; each user's
        ``event_ts`` is its time in the block; ``cold`` is the learner's
        :meth:`~online_models.base.Learner.is_cold`.)
        """
        if len(block) == 0:
            return []
        probabilities, values = learner.predict_block_with_values(block)
        values = order_values(block, values)
        cold_items = np.fromiter(map(learner.is_cold, block.item_ids), bool, len(block.item_ids))
        cold = cold_items[block.pair_item]
        chosen, joint = self.choose(block, probabilities, cold, values)
        item_ids = [block.item_ids[i] for i in block.pair_item[chosen].tolist()]
        entries = _entries(
            item_ids, probabilities[chosen], joint[chosen], cold[chosen], values[chosen]
        )
        counts = np.bincount(block.pair_user[chosen], minlength=len(block.user_ids)).tolist()
        version = learner.model_version
        return [
            {
                "schema": SCHEMA_VERSION,
                "user_id": user,
                "ts": now_ms,
                "event_ts": ts,
                "model_version": version,
                "items": entries[end - count : end],
            }
            for user, ts, count, end in zip(
                block.user_ids, block.times, counts, accumulate(counts), strict=True
            )
        ]

    def choose(
        self,
        block: CandidateBlock,
        probabilities: np.ndarray,
        cold: np.ndarray,
        values: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The pairs kept (by user, each user's best first) and every pair's joint score,
        from the pairs' predictions, whether their items are cold and their expected order
        values (:func:`order_values`; the items' prices if not given)."""
        joint = self.joint(probabilities, block, values)
        return self._top_k(joint, cold, block.pair_user), joint

    def joint(
        self, probabilities: np.ndarray, block: CandidateBlock, values: np.ndarray | None = None
    ) -> np.ndarray:
        """The joint score of every pair (the ranking objective); ``values`` as :meth:`choose`."""
        config = self.config
        if values is None:
            values = order_values(block, None)
        if config.objective == "revenue":
            return probabilities[:, 2] * values
        joint = probabilities @ np.asarray(config.weights)
        if config.value_weight:
            joint += config.value_weight * probabilities[:, 2] * values
        return joint / (sum(config.weights) + config.value_weight)

    def _top_k(self, joint: np.ndarray, cold: np.ndarray, pair_user: np.ndarray) -> np.ndarray:
        """The pairs kept, by user, each user's best first.

        Per user, the K places go to its best ``cold_slots`` cold items, then
        the best of the rest; ties keep pair order, a kept cold item first.
        """
        order = np.lexsort((-joint, pair_user))  # by user, best first (stable)
        user, cold = pair_user[order], cold[order]
        first = np.r_[True, user[1:] != user[:-1]]
        starts, run = np.flatnonzero(first), np.cumsum(first) - 1  # each user's run of positions
        kept_cold = cold & (_rank_within(cold, starts, run) < self.config.cold_slots)
        places = self.config.top_k - np.add.reduceat(kept_cold, starts)
        kept = kept_cold | (_rank_within(~kept_cold, starts, run) < places[run])
        chosen = order[kept]
        return chosen[np.lexsort((~kept_cold[kept], -joint[chosen], user[kept]))]


def candidate_block(
    users: Sequence[str],
    candidates: Mapping[str, Sequence[tuple[str, ItemContent]]],
    event_ts: Mapping[str, int],
) -> CandidateBlock:
    """The users' candidates as one block: each user and each distinct item once.

    >>> lamp = ItemContent("home.lamp", None, 20.0)
    >>> offers = {"u1": [("i1", lamp)], "u2": [("i2", lamp), ("i1", lamp)]}
    >>> block = candidate_block(["u1", "u2"], offers, {"u1": 5, "u2": 7})
    >>> block.item_ids, block.pair_user.tolist(), block.pair_item.tolist()
    (['i1', 'i2'], [0, 1, 1], [0, 1, 0])
    """
    contents = {item: content for user in users for item, content in candidates[user]}
    index = {item: n for n, item in enumerate(contents)}
    sizes = [len(candidates[user]) for user in users]
    pairs = (index[item] for user in users for item, _ in candidates[user])
    return CandidateBlock(
        user_ids=list(users),
        times=[event_ts[user] for user in users],
        item_ids=list(contents),
        categories=[content.category for content in contents.values()],
        brands=[content.brand for content in contents.values()],
        prices=[content.price for content in contents.values()],
        pair_user=np.repeat(np.arange(len(users)), sizes),
        pair_item=np.fromiter(pairs, np.int64, sum(sizes)),
    )


def per_user(block: CandidateBlock, chosen: np.ndarray) -> list[np.ndarray]:
    """``chosen`` pairs (by user, as :meth:`Ranker.choose` gives them) split per user of the
    block, in the block's user order (empty for a user with none).

    >>> lamp = ItemContent("home.lamp", None, 20.0)
    >>> block = candidate_block(["u1", "u2"], {"u1": [("i1", lamp)], "u2": [("i2", lamp)]},
    ...                         {"u1": 1, "u2": 1})
    >>> [pairs.tolist() for pairs in per_user(block, np.array([1]))]
    [[], [1]]
    """
    bounds = np.arange(1, len(block.user_ids))
    return np.split(chosen, np.searchsorted(block.pair_user[chosen], bounds))


def order_values(block: CandidateBlock, predicted: np.ndarray | None) -> np.ndarray:
    """Every pair's expected order value: the learner's prediction where it makes one
    (:meth:`~online_models.base.Learner.predict_block_with_values`), else the item's
    price, one unit (0 if unknown)."""
    if predicted is not None:
        return predicted
    prices = np.array([price or 0.0 for price in block.prices])
    return prices[block.pair_item]


def _rank_within(mask: np.ndarray, starts: np.ndarray, run: np.ndarray) -> np.ndarray:
    """Trues of ``mask`` before each position in its run (runs begin at ``starts``).

    >>> _rank_within(np.array([True, True, False, True]), np.array([0, 2]), np.array([0, 0, 1, 1]))
    array([0, 1, 0, 0])
    """
    before = np.cumsum(mask) - mask
    return before - before[starts][run]


def _entries(
    item_ids: Sequence[str],
    probabilities: np.ndarray,
    scores: np.ndarray,
    cold: np.ndarray,
    values: np.ndarray,
) -> list[dict[str, Any]]:
    """Items of score records, rounded to 6 decimals (expected values to cents).

    Rounding is monotone, so a learner's funnel order survives it; nothing
    here forces the order, so the contract tests see the learner's own.
    """
    p = round6(probabilities)
    return [
        {
            "item_id": item_id,
            "p_click": p_click,
            "p_cart": p_cart,
            "p_purchase": p_purchase,
            "score": score,
            "cold": is_cold,
            "expected_value": value,
        }
        for item_id, (p_click, p_cart, p_purchase), score, is_cold, value in zip(
            item_ids,
            p.tolist(),
            round6(scores).tolist(),
            cold.tolist(),
            np.round(values, 2).tolist(),
            strict=True,
        )
    ]


def round6(values: np.ndarray) -> np.ndarray:
    """``round(v, 6)`` of every value, exactly as Python rounds it, in bulk.

    ``rint(v * 1e6) / 1e6`` is Python's correctly rounded result unless ``v * 1e6``
    lies within its own rounding error of a half (or ``v`` is too large for
    that error to stay below 1e-6); those few are rounded by Python.

    >>> values = np.array([0.1234565, 2.5e-6, 0.25, 1e-9, 0.9999995, 1234.5678905])
    >>> round6(values).tolist() == [round(v, 6) for v in values.tolist()]
    True
    """
    scaled = values * 1e6
    rounded = np.rint(scaled) / 1e6
    doubtful = (np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6) | ~(np.abs(values) < 1e3)
    rounded[doubtful] = [round(v, 6) for v in values[doubtful].tolist()]
    return rounded
