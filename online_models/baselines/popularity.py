"""Popularity: decayed per-item funnel rates, shrunk towards the item's category.

The non-personalised baseline. For every item, every category and the whole
shop it keeps exponentially decayed label counts (half-life measured in
learned samples):

- clicks over samples with a click label,
- carts over clicked samples with a cart label,
- purchases over carted samples with a purchase label.

Each step's rate is smoothed towards the level above it:
``rate_item = (hits_item + s * rate_category) / (trials_item + s)`` and
``rate_category = (hits_category + s * rate_shop) / (trials_category + s)``,
with ``s = prior_strength``; an item never seen is scored at its category's
rate (an unknown category at the shop's). Counting trials when each label
resolves (not when the click happens) keeps delayed labels from biasing the
conditional rates. Predictions multiply along the funnel.

Example
-------
>>> from online_models.base import Learner, Sample
>>> model = Popularity(PopularityConfig(prior_strength=1.0))
>>> hit = Sample("u1", "hot", ts=1, category="toys", click=1.0)
>>> miss = Sample("u2", "cold", ts=1, category="toys", click=0.0, cart=0.0, purchase=0.0)
>>> model.learn([hit, hit, hit, miss])
>>> p = model.predict([hit, miss, Sample("u3", "unseen", ts=2, category="toys")])
>>> bool(p[0, 0] > p[2, 0] > p[1, 0])   # the unseen item gets its category's rate
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.base import Learner, Sample

_FIELDS = 6
"""Counts per entity: click trials, clicks, cart trials, carts, purchase trials, purchases."""


@dataclass(frozen=True, slots=True)
class PopularityConfig:
    """Decay, smoothing and memory bound."""

    half_life_samples: float = 50_000.0
    prior_strength: float = 5.0
    max_items: int = 1_000_000
    initial_rates: tuple[float, float, float] = (0.05, 0.1, 0.3)
    """The shop's (click, cart|click, purchase|cart) rates before any label."""


class _DecayedCounts:
    """Label counts per key, decayed by a shared clock (lazily, on access).

    At most ``max_keys`` keys are kept; the least recently updated goes first.
    """

    def __init__(self, half_life: float, max_keys: int) -> None:
        self.rate = 0.5 ** (1.0 / half_life)
        self.max_keys = max_keys
        self.rows: dict[str, list[float]] = {}  # key -> [*counts, clock of last decay]

    def get(self, key: str, clock: int) -> list[float] | None:
        """The key's counts decayed to ``clock`` (None if unknown); nothing changes."""
        row = self.rows.get(key)
        if row is None or row[_FIELDS] == clock:
            return row
        factor = self.rate ** (clock - row[_FIELDS])
        return [value * factor for value in row[:_FIELDS]]

    def add(self, key: str, clock: int, counts: Sequence[float]) -> None:
        row = self.rows.get(key)
        if row is not None and row[_FIELDS] != clock:
            factor = self.rate ** (clock - row[_FIELDS])
            for i in range(_FIELDS):
                row[i] *= factor
            row[_FIELDS] = clock
        if row is None:
            row = [0.0] * _FIELDS + [clock]
            if len(self.rows) >= self.max_keys:
                del self.rows[next(iter(self.rows))]  # the least recently updated
        else:
            del self.rows[key]  # re-inserted below: the dict stays in update order
        self.rows[key] = row
        for i, value in enumerate(counts):
            row[i] += value


class Popularity(Learner):
    """Decayed item funnel rates with category and shop priors.

    Parameters
    ----------
    config
        Half-life, prior strength and the bound on remembered items.
    """

    name = "popularity"

    def __init__(self, config: PopularityConfig | None = None) -> None:
        self.config = config or PopularityConfig()
        half_life, bound = self.config.half_life_samples, self.config.max_items
        self._items = _DecayedCounts(half_life, bound)
        self._categories = _DecayedCounts(half_life, bound)
        self._shop = _DecayedCounts(half_life, 1)
        self._clock = 0
        self.model_version = 0

    def predict(self, samples: Sequence[Sample], remembered: Any = None) -> np.ndarray:
        """``(n, 3)`` funnel probabilities."""
        clock, strength = self._clock, self.config.prior_strength
        shop = _rates(self._shop.get("", clock), self.config.initial_rates, strength)
        out = np.empty((len(samples), 3))
        by_category: dict[str, tuple[float, float, float]] = {}
        for row, s in enumerate(samples):
            key = s.category or ""
            category = by_category.get(key)
            if category is None:
                counts = self._categories.get(key, clock)
                category = by_category[key] = _rates(counts, shop, strength)
            out[row] = _rates(self._items.get(s.item_id, clock), category, strength)
        return np.cumprod(out, axis=1)

    def learn(self, samples: Sequence[Sample]) -> None:
        """Count each known label at the item, its category and the shop."""
        self.model_version += 1
        for s in samples:
            self._clock += 1
            counts = _label_counts(s)
            self._items.add(s.item_id, self._clock, counts)
            self._categories.add(s.category or "", self._clock, counts)
            self._shop.add("", self._clock, counts)

    def state_dict(self) -> dict[str, Any]:
        """Counts per item, category and shop (plain lists), and the clock."""
        return {
            "model_version": self.model_version,
            "clock": self._clock,
            "items": {k: list(v) for k, v in self._items.rows.items()},
            "categories": {k: list(v) for k, v in self._categories.rows.items()},
            "shop": {k: list(v) for k, v in self._shop.rows.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counts saved by :meth:`state_dict`."""
        self._clock = int(state["clock"])
        self.model_version = int(state.get("model_version", 0))
        tables = {"items": self._items, "categories": self._categories, "shop": self._shop}
        for key, table in tables.items():
            table.rows = {k: [float(x) for x in v] for k, v in state[key].items()}


def _label_counts(s: Sample) -> tuple[float, ...]:
    """(trials, hits) per funnel step that this sample's labels add."""
    click = cart = purchase = 0.0
    click_trial = cart_trial = purchase_trial = 0.0
    if s.click is not None:
        click_trial, click = s.weight, s.weight * s.click
    if s.cart is not None and s.click != 0:
        cart_trial, cart = s.weight, s.weight * s.cart
    if s.purchase is not None and s.cart != 0:
        purchase_trial, purchase = s.weight, s.weight * s.purchase
    return (click_trial, click, cart_trial, cart, purchase_trial, purchase)


def _rates(
    counts: list[float] | None, prior: Sequence[float], strength: float
) -> tuple[float, float, float]:
    """Smoothed (click, cart|click, purchase|cart) rates; the prior when nothing is counted."""
    if counts is None:
        return (prior[0], prior[1], prior[2])
    return (
        (counts[1] + strength * prior[0]) / (counts[0] + strength),
        (counts[3] + strength * prior[1]) / (counts[2] + strength),
        (counts[5] + strength * prior[2]) / (counts[4] + strength),
    )
