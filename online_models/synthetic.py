"""A toy shop: a fast, seeded stream of labelled samples with known truth.

For the learner's own tests, throughput benchmark and memory check (the full
simulated shop lives in ``producers``). Some categories sell better than others,
users like some of them more than others and differ in price sensitivity; items
have a category path, a brand, a price and a quality of their own that no
content feature reveals. New items keep arriving, so part of the stream is
always about cold items. Every sample carries all three funnel labels, drawn
from known probabilities (returned alongside, for an oracle).

Example
-------
>>> shop = ToyShop(seed=1, users=50, items=100)
>>> samples, truth = shop.stream(1000)
>>> len(samples), truth.shape
(1000, (1000, 3))
>>> s = samples[0]
>>> s.category.count("."), s.click in (0.0, 1.0), s.cart <= s.click
(1, True, True)
>>> bool((truth[:, 2] <= truth[:, 1]).all() and (truth[:, 1] <= truth[:, 0]).all())
True
"""

from __future__ import annotations

import numpy as np

from online_models.base import Sample

DEVICES = ("mobile", "desktop", "tablet")


class ToyShop:
    """A seeded generator of funnel samples.

    Parameters
    ----------
    seed
        Seeds everything.
    users, items
        Population sizes; item ``j`` becomes available after a share
        ``j / items`` of ``arrival_span`` of the stream (a fifth from the start).
    tops, subs, brands
        Category tree (``tops`` x ``subs`` leaves) and brand count.
    """

    def __init__(
        self,
        seed: int = 0,
        users: int = 2_000,
        items: int = 4_000,
        tops: int = 8,
        subs: int = 5,
        brands: int = 60,
        arrival_span: int = 100_000,
    ) -> None:
        rng = np.random.default_rng(seed)
        self._rng = rng
        self.users, self.items, self.arrival_span = users, items, arrival_span
        self.tops = tops
        self.item_top = rng.integers(0, tops, items)
        self.item_sub = rng.integers(0, subs, items)
        self.item_brand = rng.integers(0, brands, items)
        top_price = rng.normal(3.5, 1.0, tops)
        self.item_log_price = top_price[self.item_top] + rng.normal(0, 0.6, items)
        self.item_quality = rng.normal(0, 0.4, items)
        self.brand_quality = rng.normal(0, 0.5, brands)
        self.top_price = top_price
        self.top_effect = rng.normal(0, 0.8, tops)
        self.sub_effect = rng.normal(0, 0.4, (tops, subs))
        self.user_top = rng.normal(0, 0.6, (users, tops))
        self.user_sub = rng.normal(0, 0.3, (users, tops, subs))
        self.user_price_sensitivity = rng.uniform(0.2, 1.2, users)
        self.user_device = rng.integers(0, len(DEVICES), users)
        self.device_effect = np.array([0.0, 0.2, -0.2])
        self._born = np.floor(
            np.maximum(0, np.arange(items) - items // 5) / (items - items // 5) * arrival_span
        ).astype(np.int64)
        self._by_top = [np.flatnonzero(self.item_top == t) for t in range(tops)]
        self._t = 0

    def _available(self, t: np.ndarray) -> np.ndarray:
        """Number of items born by sample index ``t``."""
        return np.searchsorted(self._born, t, side="right")

    def _exposures(self, users: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Items shown: half any item, a quarter new ones, a quarter a liked category."""
        rng, n = self._rng, len(users)
        available = self._available(t)
        items = np.floor(available * rng.random(n) ** 1.5).astype(np.int64)
        recent = rng.random(n) < 0.25
        window = np.maximum(1, available // 20)
        items[recent] = (
            available[recent] - 1 - rng.integers(0, 1 << 30, recent.sum()) % window[recent]
        )
        liked = ~recent & (rng.random(n) < 1 / 3)
        for u_pos in np.flatnonzero(liked):
            top = int(np.argmax(self.user_top[users[u_pos]] + rng.gumbel(size=self.tops)))
            pool = self._by_top[top]
            count = np.searchsorted(pool, available[u_pos])
            if count:
                items[u_pos] = pool[rng.integers(0, count)]
        return items

    def truth(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``(n, 3)`` true entire-space ``p_click, p_cart, p_purchase``."""
        top, sub = self.item_top[items], self.item_sub[items]
        trend = self.top_effect[top] + self.sub_effect[top, sub]
        affinity = self.user_top[users, top] + self.user_sub[users, top, sub]
        brand_q, item_q = self.brand_quality[self.item_brand[items]], self.item_quality[items]
        relative_price = self.item_log_price[items] - self.top_price[top]
        sensitivity = self.user_price_sensitivity[users]
        click = (
            -2.2 + trend + affinity + brand_q + item_q + self.device_effect[self.user_device[users]]
        )
        cart = -0.8 + 0.6 * brand_q + 0.5 * item_q - 1.5 * sensitivity * relative_price
        purchase = -0.3 + 0.4 * affinity - 1.0 * sensitivity * relative_price
        conditional = 1 / (1 + np.exp(-np.stack([click, cart, purchase], axis=1)))
        return np.cumprod(conditional, axis=1)

    def stream(self, n: int) -> tuple[list[Sample], np.ndarray]:
        """The next ``n`` samples and their true probabilities."""
        rng = self._rng
        t = self._t + np.arange(n)
        self._t += n
        users = rng.integers(0, self.users, n)
        items = self._exposures(users, t)
        truth = self.truth(users, items)
        steps = rng.random((n, 3)) < truth / np.concatenate([np.ones((n, 1)), truth[:, :2]], axis=1)
        labels = np.cumprod(steps, axis=1).astype(float)
        prices = np.round(np.exp(self.item_log_price[items]), 2)
        samples = [
            Sample(
                user_id=f"u{u}",
                item_id=f"i{i}",
                ts=1_700_000_000_000 + int(k) * 100,
                category=f"c{self.item_top[i]}.s{self.item_sub[i]}",
                brand=f"b{self.item_brand[i]}",
                price=float(p),
                device=DEVICES[self.user_device[u]],
                click=y[0],
                cart=y[1],
                purchase=y[2],
            )
            for u, i, k, p, y in zip(
                users.tolist(),
                items.tolist(),
                t.tolist(),
                prices.tolist(),
                labels.tolist(),
                strict=True,
            )
        ]
        return samples, truth
