"""River logistic regressions along the funnel, on hashed one-hot features.

The linear baseline: three :class:`river.linear_model.LogisticRegression`
models, one per funnel step, each over the same one-hot features (user, item,
category, brand, price bucket, device) hashed with CRC-32 into a fixed number
of weights (stable across processes, unlike Python's ``hash``):

- ``click``: ``p(click)``, from every sample with a click label;
- ``cart``: ``p(cart | click)``, from cart labels of clicked samples;
- ``purchase``: ``p(purchase | cart)``, from purchase labels of carted samples.

Predictions multiply along the funnel, so ``p_purchase <= p_cart <= p_click``
always holds. Which samples were clicked (carted) follows from the label rule
of :mod:`online_models.labels`: a cart label that comes without its click
label belongs to a clicked sample, a 0 click comes with 0 cart and purchase.

Example
-------
>>> from online_models.base import Sample, funnel_consistent
>>> model = RiverFunnelLR(RiverLRConfig(buckets=1 << 10))
>>> s = Sample("u1", "i9", ts=1, category="books", brand="pub", price=9.5, click=1.0)
>>> model.learn([s])
>>> p = model.predict([s])
>>> bool(p[0, 0] > 0.5), funnel_consistent(p)
(True, True)
>>> twin = RiverFunnelLR(RiverLRConfig(buckets=1 << 10))
>>> twin.load_state_dict(model.state_dict())
>>> bool((twin.predict([s]) == p).all())
True
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from river import linear_model, optim

from online_models.base import TASKS, Learner, Sample
from online_models.content import price_buckets


@dataclass(frozen=True, slots=True)
class RiverLRConfig:
    """Hashing and SGD settings, shared by the three regressions."""

    buckets: int = 1 << 20
    learning_rate: float = 0.05
    intercept_learning_rate: float = 0.01
    l2: float = 0.0


def hashed_features(samples: Sequence[Sample], buckets: int) -> list[dict[int, float]]:
    """One-hot features of each sample, hashed into ``buckets`` slots.

    >>> hashed_features([Sample("u1", "i9", ts=1)], buckets=1 << 20)[0] == hashed_features(
    ...     [Sample("u1", "i9", ts=2)], buckets=1 << 20)[0]
    True
    """
    prices = price_buckets([s.price for s in samples])
    crc = zlib.crc32
    return [
        {
            crc(key.encode()) % buckets: 1.0
            for key in (
                f"user={s.user_id}",
                f"item={s.item_id}",
                f"category={s.category}",
                f"brand={s.brand}",
                f"price={price}",
                f"device={s.device}",
            )
        }
        for s, price in zip(samples, prices.tolist(), strict=True)
    ]


class RiverFunnelLR(Learner):
    """``p_click``, ``p(cart|click)``, ``p(purchase|cart)`` as River regressions.

    Parameters
    ----------
    config
        Hashing and learning rates.
    """

    name = "river_lr"

    def __init__(self, config: RiverLRConfig | None = None) -> None:
        self.config = config or RiverLRConfig()
        self._models = {task: self._new_model() for task in TASKS}
        self.model_version = 0

    def _new_model(self) -> linear_model.LogisticRegression:
        return linear_model.LogisticRegression(
            optimizer=optim.SGD(self.config.learning_rate),
            intercept_lr=self.config.intercept_learning_rate,
            l2=self.config.l2,
        )

    def predict(self, samples: Sequence[Sample], remembered: Any = None) -> np.ndarray:
        """``(n, 3)`` funnel probabilities."""
        out = np.empty((len(samples), 3))
        steps = [self._models[task].predict_proba_one for task in TASKS]
        for row, x in enumerate(hashed_features(samples, self.config.buckets)):
            out[row] = [step(x)[True] for step in steps]
        return np.cumprod(out, axis=1)

    def learn(self, samples: Sequence[Sample]) -> None:
        """Learn each known label in its step's conditional model."""
        click, cart, purchase = (self._models[task].learn_one for task in TASKS)
        self.model_version += 1
        for s, x in zip(samples, hashed_features(samples, self.config.buckets), strict=True):
            if s.click is not None:
                click(x, s.click > 0, s.weight)
            if s.cart is not None and s.click != 0:
                cart(x, s.cart > 0, s.weight)
            if s.purchase is not None and s.cart != 0:
                purchase(x, s.purchase > 0, s.weight)

    def state_dict(self) -> dict[str, Any]:
        """Weights (hashed slot -> value) and intercept per step, and the updates applied."""
        return {
            **{
                task: {"weights": dict(model._weights), "intercept": float(model.intercept)}
                for task, model in self._models.items()
            },
            "model_version": self.model_version,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights saved by :meth:`state_dict`."""
        for task in TASKS:
            model = self._new_model()
            for slot, weight in state[task]["weights"].items():
                model._weights[int(slot)] = float(weight)
            model.intercept = float(state[task]["intercept"])
            self._models[task] = model
        self.model_version = int(state.get("model_version", 0))
