"""The learner protocol: what every model in recstream speaks.

The multi-task net, each baseline and the stream worker meet here and only
here. A learner scores a batch of samples, learns a batch of samples, and
turns its whole state into a dict of plain values and tensors (and back), so
it can be checkpointed without pickling objects.

Example
-------
>>> from online_models.base import Sample, funnel_consistent
>>> s = Sample(user_id="u1", item_id="i9", ts=1_732_240_000_123,
...            category="electronics.phone", brand="acme", price=199.0, click=1.0)
>>> s.labels()
(1.0, None, None)
>>> funnel_consistent([[0.2, 0.05, 0.01]])
True

A ranking round scores many users against many candidate items at once: a
:class:`CandidateBlock` names each user and each item once and lists the
pairs by index, so a learner that can (:meth:`MultiTaskLearner.predict_block
<online_models.learner.MultiTaskLearner.predict_block>`) works out each user
and each item once; :func:`predict_block` falls back on ``predict`` for the others.

>>> block = CandidateBlock(["u1"], [5], ["i1", "i2"], ["a.b", None], [None, "x"], [3.0, None],
...                        pair_user=np.array([0, 0]), pair_item=np.array([1, 0]))
>>> [(s.user_id, s.item_id, s.ts, s.category) for s in block.samples()]
[('u1', 'i2', 5, None), ('u1', 'i1', 5, 'a.b')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

TASKS: tuple[str, str, str] = ("click", "cart", "purchase")
"""The funnel, in order; predictions are arrays with one column per task."""


@dataclass(slots=True)
class Sample:
    """One (user, item, context, time) with its funnel labels.

    Labels are entire-space: ``cart`` is 1 only if the item was clicked *and*
    carted, ``purchase`` only if also bought. ``None`` means "not known yet"
    (a click whose conversions are still inside the attribution window); a
    learner masks unknown labels out of its loss. ``weight`` carries the
    importance correction of sampled negatives (see ``online_models.labels``).
    """

    user_id: str
    item_id: str
    ts: int
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    device: str | None = None
    click: float | None = None
    cart: float | None = None
    purchase: float | None = None
    weight: float = 1.0

    def labels(self) -> tuple[float | None, float | None, float | None]:
        """The (click, cart, purchase) labels, ``None`` where unresolved."""
        return (self.click, self.cart, self.purchase)


@runtime_checkable
class Learner(Protocol):
    """Score a batch, learn a batch, save and restore state.

    ``predict`` returns an ``(n, 3)`` float array of ``p_click, p_cart,
    p_purchase`` with ``p_purchase <= p_cart <= p_click`` in every row.
    ``learn`` updates on one micro-batch; labels that are ``None`` are not
    learned. ``state_dict`` holds only numbers, strings, lists, dicts, numpy
    arrays and tensors, so ``torch.load(..., weights_only=True)`` can read it
    back without executing anything.
    """

    name: str

    def predict(self, samples: Sequence[Sample]) -> np.ndarray: ...

    def learn(self, samples: Sequence[Sample]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class CandidateBlock:
    """Users, candidate items, and which user is offered which item, by index.

    Per user: ``user_ids`` and ``times``, the event time each is scored at.
    Per item: ``item_ids`` and the content ``categories``, ``brands`` and
    ``prices``. Per pair: ``pair_user`` and ``pair_item``, ``(P,)`` int64
    indices into those. A pair scores as the :class:`Sample` ``(user, item,
    time, content)`` would (no device).
    """

    user_ids: Sequence[str]
    times: Sequence[int]
    item_ids: Sequence[str]
    categories: Sequence[str | None]
    brands: Sequence[str | None]
    prices: Sequence[float | None]
    pair_user: np.ndarray
    pair_item: np.ndarray

    def __len__(self) -> int:
        """Pairs."""
        return len(self.pair_user)

    def samples(self) -> list[Sample]:
        """One :class:`Sample` per pair, in order."""
        return [
            Sample(
                user_id=self.user_ids[u],
                item_id=self.item_ids[i],
                ts=self.times[u],
                category=self.categories[i],
                brand=self.brands[i],
                price=self.prices[i],
            )
            for u, i in zip(self.pair_user.tolist(), self.pair_item.tolist(), strict=True)
        ]


def predict_block(learner: Learner, block: CandidateBlock) -> np.ndarray:
    """``(P, 3)`` predictions of the block's pairs: ``learner.predict(block.samples())``.

    A learner with a ``predict_block`` method of its own (each user and item
    worked out once) is asked that instead.
    """
    own = getattr(learner, "predict_block", None)
    return own(block) if own is not None else learner.predict(block.samples())


def funnel_consistent(predictions: Any, tolerance: float = 1e-9) -> bool:
    """True when every row satisfies ``p_purchase <= p_cart <= p_click``."""
    p = np.asarray(predictions, dtype=float)
    return bool(np.all(p[:, 1] <= p[:, 0] + tolerance) and np.all(p[:, 2] <= p[:, 1] + tolerance))
