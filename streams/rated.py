"""The catalog's items the model rates best for a user it knows nothing about: a candidate source.

The candidate pool's other sources (:mod:`streams.candidates`) are what is
popular and what the user touched lately, so a good item the shop seldom
shows never reaches a list: on the simulator (seed 7, with impressions) the
10 best of a user's candidates by the true probabilities bring 3.19 expected
clicks, and adding the 30 items best for everyone across the whole catalog
would raise that to 3.57. The model knows which items are good before they
are popular; this source asks it.

Every offered item is scored in turn, for a user with no id and no history
(:data:`ANONYMOUS`), by the ranker's objective: each batch scores the next
slice of the catalog, as many items as its funnel events times the catalog
over ``cycle_events`` (at most ``max_scan``), so the whole catalog is scored
once every ``cycle_events`` funnel events at a cost spread over the batches.
A slice waits until ``min_scan`` items are due (or the whole catalog): a
scoring call costs about 5 ms before its first item (17 µs an item after
that, a 5,000-item catalog, 2 cores), so scanning 120 items after every
small batch spent most of its time on the call. The ``size`` best scores
kept are the source's items; an item rescored replaces its old score, and
one no longer offered is dropped.

Example
-------
>>> import numpy as np
>>> from online_models.base import Learner
>>> from online_models.catalog import Catalog
>>> from producers.contract import CatalogItem
>>> from streams.ranking import Ranker
>>> class ByPrice(Learner):                  # any Learner will do
...     name, model_version = "by_price", 1
...     def predict_block_with_values(self, block):
...         p = np.array(block.prices)[block.pair_item] / 100
...         return np.stack([p, p / 2, p / 4], axis=1), None
>>> catalog = Catalog()
>>> for n, price in enumerate([10.0, 50.0, 30.0]):
...     _ = catalog.describe(CatalogItem(f"i{n}", 0, category="a.b", price=price))
>>> rated = RatedItems(size=2, cycle_events=3)
>>> rated.advance(3, ByPrice(), Ranker(), catalog, now_ms=0)  # a slice was due: scored
True
>>> rated.best
['i1', 'i2']
"""

from __future__ import annotations

import heapq
from itertools import islice
from typing import Any

import numpy as np

from online_models.base import CandidateBlock, Learner
from online_models.catalog import Catalog
from streams.ranking import Ranker, order_values

ANONYMOUS = ""
"""The user the catalog is scored for: no event carries an empty ``user_id`` (the contract
rejects it), so the model knows nothing about them: no row, no history."""


class RatedItems:
    """The ``size`` items best for :data:`ANONYMOUS` by the ranker's objective, kept current by
    scoring the catalog in turn (see the module docstring)."""

    def __init__(
        self, size: int = 30, cycle_events: int = 500, min_scan: int = 512, max_scan: int = 4096
    ) -> None:
        if size < 0 or cycle_events < 1 or not 1 <= min_scan <= max_scan:
            raise ValueError("need size >= 0, cycle_events >= 1 and 1 <= min_scan <= max_scan")
        self.size = size
        self.cycle_events = cycle_events
        self.min_scan = min_scan
        self.max_scan = max_scan
        self._scores: dict[str, float] = {}  # the best items' scores
        self._cursor = 0  # where the next slice starts, in the catalog's order
        self._owed = 0.0  # items due to be scored, carried to the next batch

    @property
    def best(self) -> list[str]:
        """The source's items, best first."""
        return sorted(self._scores, key=self._scores.__getitem__, reverse=True)

    def advance(
        self, funnel_events: int, learner: Learner, ranker: Ranker, catalog: Catalog, now_ms: int
    ) -> bool:
        """Score the next slice of the catalog after a batch of ``funnel_events``; whether a
        slice was due (else :attr:`best` is as it was)."""
        if not self.size or not len(catalog):
            return False
        self._owed += funnel_events * len(catalog) / self.cycle_events
        count = min(int(self._owed), self.max_scan, len(catalog))
        if count == 0 or count < min(self.min_scan, len(catalog)):
            return False
        self._owed = min(self._owed - count, float(self.max_scan))
        items = self._next_slice(catalog, count)
        known = [catalog.get(item) for item in items]
        block = CandidateBlock(
            user_ids=[ANONYMOUS],
            times=[now_ms],
            item_ids=items,
            categories=[content.category for content in known],
            brands=[content.brand for content in known],
            prices=[content.price for content in known],
            pair_user=np.zeros(len(items), dtype=np.int64),
            pair_item=np.arange(len(items)),
        )
        probabilities, values = learner.predict_block_with_values(block)
        scores = ranker.joint(probabilities, block, order_values(block, values))
        merged = {item: score for item, score in self._scores.items() if catalog.offered(item)}
        merged.update(zip(items, scores.tolist(), strict=True))
        self._scores = dict(heapq.nlargest(self.size, merged.items(), key=lambda kv: kv[1]))
        return True

    def _next_slice(self, catalog: Catalog, count: int) -> list[str]:
        """``count`` offered items from the cursor on, wrapping round the catalog."""
        items: list[str] = []
        for _ in range(2):  # the rest of the catalog, then from its start
            if self._cursor >= len(catalog):
                self._cursor = 0
            taken = list(islice(catalog.item_ids(), self._cursor, self._cursor + count))
            self._cursor += len(taken)
            items += [item for item in taken if catalog.offered(item)]
            count -= len(taken)
            if count <= 0:
                break
        return list(dict.fromkeys(items))

    def forget(self) -> None:
        """Drop every score (a model replaced by an earlier one rates afresh)."""
        self._scores.clear()

    def state_dict(self) -> dict[str, Any]:
        """The best items' scores and where the scan is, as plain values."""
        return {"scores": dict(self._scores), "cursor": self._cursor, "owed": self._owed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self._scores = {str(item): float(score) for item, score in state["scores"].items()}
        self._cursor = int(state["cursor"])
        self._owed = float(state["owed"])
