"""Rank candidates with the learner and shape each user's top-K as the score contract says.

The joint objective is a weighted sum of the funnel probabilities
(``weights``), or expected revenue ``p_purchase * price`` (``objective =
"revenue"``). ``cold_slots`` of the K places are kept for the best-rated cold
items, so new items reach users before anyone has clicked them (exploration);
a cold item that ranks high on its own merits takes a normal place.

Example
-------
>>> import numpy as np
>>> from producers.contract import ItemContent
>>> class Fixed:                         # any Learner will do
...     name, model_version = "fixed", 7
...     def predict(self, samples):
...         return np.array([[0.5, 0.1, 0.02], [0.2, 0.05, 0.01]])[: len(samples)]
>>> ranker = Ranker(RankingConfig(top_k=2, cold_slots=0))
>>> cands = {"u1": [("i1", ItemContent("a.b", "x", 10.0)), ("i2", ItemContent("a.b", "y", 5.0))]}
>>> records = ranker.rank(Fixed(), cands, {"u1": 1_000}, now_ms=1_100, is_cold=lambda i: False)
>>> [entry["item_id"] for entry in records[0]["items"]], records[0]["model_version"]
(['i1', 'i2'], 7)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.base import Learner, Sample
from producers.contract import ItemContent

OBJECTIVES = ("weighted", "revenue")


@dataclass(frozen=True)
class RankingConfig:
    """K, the joint objective and the places kept for cold items."""

    top_k: int = 20
    objective: str = "weighted"
    weights: tuple[float, float, float] = (1.0, 4.0, 16.0)
    cold_slots: int = 2

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}")
        if not 0 <= self.cold_slots <= self.top_k:
            raise ValueError("cold_slots must be between 0 and top_k")


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
        is_cold: Callable[[str], bool],
    ) -> list[dict[str, Any]]:
        """One score record per user with candidates (see docs/contracts.md, "Scores")."""
        users = [user for user, items in candidates.items() if items]
        pairs = [pair for user in users for pair in candidates[user]]
        if not pairs:
            return []
        samples = [
            Sample(
                user_id=user,
                item_id=item,
                ts=event_ts[user],
                category=content.category,
                brand=content.brand,
                price=content.price,
            )
            for user in users
            for item, content in candidates[user]
        ]
        probabilities = learner.predict(samples)
        joint = self._joint(probabilities, pairs)
        cold_of = {item: is_cold(item) for item in {item for item, _ in pairs}}
        cold = np.fromiter((cold_of[item] for item, _ in pairs), dtype=bool, count=len(pairs))
        version = int(getattr(learner, "model_version", 0))
        records, start = [], 0
        for user in users:
            end = start + len(candidates[user])
            chosen = start + self._top_k(joint[start:end], cold[start:end])
            records.append(
                {
                    "user_id": user,
                    "ts": now_ms,
                    "event_ts": event_ts[user],
                    "model_version": version,
                    "items": [
                        _entry(pairs[i][0], probabilities[i], float(joint[i]), bool(cold[i]))
                        for i in chosen
                    ],
                }
            )
            start = end
        return records

    def _joint(
        self, probabilities: np.ndarray, pairs: Sequence[tuple[str, ItemContent]]
    ) -> np.ndarray:
        """The joint score of every candidate (the ranking objective)."""
        if self.config.objective == "revenue":
            prices = np.array([content.price or 0.0 for _, content in pairs])
            return probabilities[:, 2] * prices
        return probabilities @ np.asarray(self.config.weights) / sum(self.config.weights)

    def _top_k(self, joint: np.ndarray, cold: np.ndarray) -> np.ndarray:
        """Positions of the K places, best first: the best cold items, then the best of the rest."""
        order = np.argsort(-joint, kind="stable")
        kept_cold = order[cold[order]][: self.config.cold_slots]
        rest = order[~np.isin(order, kept_cold)][: self.config.top_k - len(kept_cold)]
        chosen = np.concatenate([kept_cold, rest])
        return chosen[np.argsort(-joint[chosen], kind="stable")]


def _entry(item_id: str, row: np.ndarray, score: float, cold: bool) -> dict[str, Any]:
    """One item of a score record, rounded, with the funnel kept consistent after rounding."""
    p_click = round(float(row[0]), 6)
    p_cart = min(round(float(row[1]), 6), p_click)
    p_purchase = min(round(float(row[2]), 6), p_cart)
    return {
        "item_id": item_id,
        "p_click": p_click,
        "p_cart": p_cart,
        "p_purchase": p_purchase,
        "score": round(score, 6),
        "cold": cold,
    }
