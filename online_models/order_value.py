"""Order value: what a purchase is worth, learned from the purchases themselves.

An order's value is ``price * quantity`` (the event's ``quantity``, 1 when
absent). Values are skewed and non-negative, and a price of 0 is valid, so
everything works in ``log1p``. Each purchase with a known price becomes an
*order sample* (:func:`order_samples`): a :class:`~online_models.base.Sample`
with no funnel label and ``value = log1p(price * quantity)``, which only the
value head learns from (every funnel loss masks it out; baselines skip it).

What is predicted is the log value of a typical order,
``log1p(price * q) + correction``:

``q``, the order's typical quantity
    An order's quantity is recovered from its value and price
    (``expm1(value) / price``). :class:`ValueStats` keeps, decayed, per
    top-level category (a department) and shop-wide a histogram of log
    quantities and the mean of the units beyond the first ("extra"
    units), and per user its extra units against what its departments'
    means expected of those orders. A department's typical quantity is
    its histogram's median (smoothed by :data:`PRIOR_ORDERS`
    pseudo-orders of the shop's); a user's volume is the ratio of its
    extra units to the expected ones, both with :data:`PRIOR_ORDERS`
    orders' worth of the shop's mean added (so it starts at 1, the
    gamma-Poisson estimate of a rate); ``q = 1 + volume * (median - 1)``.
    A count of units, not of log units: a heavy buyer buys many more of a
    bulk item and still one of a single one. After a handful of orders a
    count knows what an embedding learns slowly.
``correction``
    The net's value head, on the shared representation, learns the rest
    by absolute error: the error judged is the absolute one, and a
    typical order (the median) is what the score contract promises.

Measured on the simulator (``bench quality``, MAE of ``log1p`` value over
the second half's orders, seeds 7 and 11): a department's mean residual
``log1p(price * q) - log1p(price)`` instead, 0.394 and 0.415, as a
quantity sells cheap items by fewer log units than dear ones and the mean
of a skewed count sits above its median; a user's own mean, smoothed
towards the department at hand, carried the departments of its earlier
orders into the next one (0.420 and 0.453); a user's mean excess of log
quantity over its departments', added to the department's median log
quantity, 0.379 and 0.398, against 0.370 and 0.382 with the volume
ratio.

Example
-------
>>> from producers.contract import Event, ItemContent
>>> bought = Event("e1", 5, "purchase", "u1", "i1", ItemContent("home.lamp", None, 9.0),
...                quantity=3)
>>> [round(s.value, 4) for s in order_samples([bought], lambda item_id: None)]
[3.3322]
>>> stats = ValueStats(users=4, tops=4)
>>> stats.add(np.array([1, 2, 2]), np.array([2, 2, 3]), np.log([3.0, 3.0, 1.0]))
>>> log_q, features = stats.features(np.array([1, 3]), np.array([2, 2]))
>>> bool(log_q[0] > log_q[1] > 0), features.shape
(True, (2, 3))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from online_models.base import Sample
from online_models.tables import DecayedSums
from producers.contract import Event, ItemContent

PRIOR_ORDERS = 3.0
"""Pseudo-orders at the level above that each user's and department's statistics are
smoothed with."""
QUANTITY_BINS = 24
BIN_WIDTH = 0.125
"""A department's histogram of log quantities: 24 bins of 0.125 from 0 (one unit) up, the
last open (above 2.875, 18 units)."""
_COLUMNS = 2 + 2 * QUANTITY_BINS  # count, sum, then each bin's count and each bin's sum
_ONE_UNIT = np.r_[1.0, 0.0, 1.0, np.zeros(2 * QUANTITY_BINS - 1)]  # an order of log q = 0
MIN_MEAN_EXTRA = 0.1
"""The shop's mean extra units that a user's prior assumes at least (a shop selling single
units so far still lets a user's volume move)."""
VALUE_FEATURES = ("department_log_quantity", "log_user_volume", "log_user_orders")
"""The value head's own inputs beside the shared representation (each a deviation)."""


def order_samples(
    events: Sequence[Event], content_of: Callable[[str], ItemContent | None]
) -> list[Sample]:
    """An order sample per purchase whose price is known (the event's, else ``content_of``)."""
    out = []
    for event in events:
        if event.type != "purchase":
            continue
        content = event.item or content_of(event.item_id)
        if content is None or content.price is None:
            continue
        out.append(
            Sample.of_event(event, content, value=math.log1p(content.price * event.quantity))
        )
    return out


class ValueStats:
    """Decayed statistics of orders' log quantities per user row, per top-level category
    row and shop-wide (the half-life in learned orders, as the encoder's label statistics).

    A department and the shop keep a histogram of log quantities (:data:`QUANTITY_BINS`
    bins of :data:`BIN_WIDTH`, each with its count and sum) beside their count of orders
    and sum of extra units; a user keeps its count of orders, its extra units and those
    its departments' means expected.
    """

    def __init__(self, users: int, tops: int, half_life: float = 20_000.0) -> None:
        self.users = DecayedSums(users, 3, half_life)
        self.tops = DecayedSums(tops, _COLUMNS, half_life)
        self.shop = DecayedSums(1, _COLUMNS, half_life)

    def add(self, users: np.ndarray, tops: np.ndarray, log_quantities: np.ndarray) -> None:
        """Orders of ``users`` in departments ``tops`` with these log quantities: a user
        keeps its extra units and those its departments' means expected at the time."""
        extra = np.expm1(log_quantities)  # units beyond the first
        departments, each = np.unique(tops, return_inverse=True)
        expected = self._mean_extra(departments)[each]
        self.users.add(users, np.stack([np.ones_like(extra), extra, expected], axis=1))
        moments = np.zeros((len(log_quantities), _COLUMNS))
        moments[:, 0], moments[:, 1] = 1.0, extra
        bins = 2 + np.clip((log_quantities / BIN_WIDTH).astype(np.int64), 0, QUANTITY_BINS - 1)
        rows = np.arange(len(log_quantities))
        moments[rows, bins], moments[rows, bins + QUANTITY_BINS] = 1.0, log_quantities
        self.tops.add(tops, moments)
        self.shop.add(np.zeros(len(log_quantities), np.int64), moments)

    def features(self, users: np.ndarray, tops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B,)`` typical log quantity of each (user, department), and ``(B, 3)`` its
        parts: the department's median log quantity against the shop's, the log of the
        user's volume (smoothed towards 1 by :data:`PRIOR_ORDERS` orders' worth), and
        ``log1p`` of the user's orders."""
        departments, each = np.unique(tops, return_inverse=True)  # a batch holds a few
        shop, top = self._smoothed(departments)
        shop_median, top_median = _medians(shop[None, :])[0], _medians(top)[each]
        user = self.users.get(users)
        prior = PRIOR_ORDERS * max(shop[1] / shop[0], MIN_MEAN_EXTRA)
        ratio = (user[:, 1] + prior) / (user[:, 2] + prior)
        log_q = np.log1p(ratio * np.expm1(top_median))
        features = np.stack([top_median - shop_median, np.log(ratio), np.log1p(user[:, 0])], axis=1)
        return log_q, features.astype(np.float32)

    def _smoothed(self, tops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The shop's statistics (``(_COLUMNS,)``, one pseudo-order of a single unit added)
        and each department's, :data:`PRIOR_ORDERS` pseudo-orders of the shop's added."""
        shop = self.shop.get(np.zeros(1, np.int64))[0] + _ONE_UNIT
        return shop, self.tops.get(tops) + PRIOR_ORDERS * shop / shop[0]

    def _mean_extra(self, tops: np.ndarray) -> np.ndarray:
        """The departments' mean units beyond the first, smoothed towards the shop's."""
        top = self._smoothed(tops)[1]
        return top[:, 1] / top[:, 0]

    def forget(self, users: np.ndarray, tops: np.ndarray) -> None:
        """Released (or erased) user rows and category token rows start again."""
        self.users.clear(users)
        self.tops.clear(tops)

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).state_dict() for name in ("users", "tops", "shop")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """What :meth:`state_dict` saved; older checkpoints kept log residuals over prices,
        not quantities: then the statistics start again."""
        if tuple(state["tops"]["values"].shape[1:]) != (_COLUMNS,):
            return
        for name in ("users", "tops", "shop"):
            getattr(self, name).load_state_dict(state[name])


def _medians(rows: np.ndarray) -> np.ndarray:
    """Each row's median log quantity: the mean of the histogram bin where half its weight
    is reached (quantities are whole units: up to 10, a bin holds one)."""
    counts = rows[:, 2 : 2 + QUANTITY_BINS]
    sums = rows[:, 2 + QUANTITY_BINS :]
    half = np.cumsum(counts, axis=1) >= counts.sum(axis=1, keepdims=True) / 2
    median_bin = np.argmax(half, axis=1)
    picked = np.arange(len(rows))
    return sums[picked, median_bin] / np.maximum(counts[picked, median_bin], 1e-12)
