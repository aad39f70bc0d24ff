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
and each item once; the protocol's default scores the block's samples.

>>> block = CandidateBlock(["u1"], [5], ["i1", "i2"], ["a.b", None], [None, "x"], [3.0, None],
...                        pair_user=np.array([0, 0]), pair_item=np.array([1, 0]))
>>> [(s.user_id, s.item_id, s.ts, s.category) for s in block.samples()]
[('u1', 'i2', 5, None), ('u1', 'i1', 5, 'a.b')]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from producers.contract import Event, ItemContent

TASKS: tuple[str, str, str] = ("click", "cart", "purchase")
"""The funnel, in order; predictions are arrays with one column per task."""


@dataclass(slots=True)
class Sample:
    """One (user, item, context, time) with its funnel labels.

    Labels are entire-space: ``cart`` is 1 only if the item was clicked *and*
    carted, ``purchase`` only if also bought. ``None`` means "not known yet"
    (a click whose conversions are still inside the attribution window); a
    learner masks unknown labels out of its loss. ``weight`` scales the
    sample's loss; ``logit_offset`` is the sampling-probability correction
    of a sampled pair, added to the click logit while learning and never
    when serving (see ``online_models.labels``). ``value`` is
    ``log1p(price * quantity)`` of an order sample
    (:func:`online_models.order_value.order_samples`), ``None`` otherwise.
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
    logit_offset: float = 0.0
    value: float | None = None

    def labels(self) -> tuple[float | None, float | None, float | None]:
        """The (click, cart, purchase) labels, ``None`` where unresolved."""
        return (self.click, self.cart, self.purchase)

    @classmethod
    def of_event(cls, event: Event, content: ItemContent, **fields: Any) -> Any:
        """A sample of ``event``'s user, item, time and device, with the item's ``content``
        and any other ``fields`` (labels, value, key).

        >>> from producers.contract import Event, ItemContent
        >>> bought = Event("e1", 5, "purchase", "u1", "i1", context={"device": "web"})
        >>> Sample.of_event(bought, ItemContent("a.b", None, 2.0), value=1.0).device
        'web'
        """
        return cls(
            user_id=event.user_id,
            item_id=event.item_id,
            ts=event.ts,
            category=content.category,
            brand=content.brand,
            price=content.price,
            device=(event.context or {}).get("device"),
            **fields,
        )


@dataclass(frozen=True, slots=True)
class LearnerHealth:
    """What a learner reports on ``/metrics``: rows in use per ID table, items still cold.

    ``cold_items`` is None for a learner without a notion of cold items.
    """

    table_rows: dict[str, int] = field(default_factory=dict)
    cold_items: int | None = None


@runtime_checkable
class Learner(Protocol):
    """Remember, score and learn batches, save and restore state.

    ``remember`` keeps what new samples are scored with now, to learn their
    labels with it later (the label stage calls it once, when the samples
    appear); it returns what ``predict`` may reuse for those same samples.
    ``predict`` changes nothing and returns an ``(n, 3)`` float array of
    ``p_click, p_cart, p_purchase`` with ``p_purchase <= p_cart <= p_click``
    in every row. ``learn`` updates on one micro-batch of labelled samples;
    labels that are ``None`` are not learned. ``model_version`` counts the
    updates applied. ``state_dict`` holds only numbers, strings, lists, dicts,
    numpy arrays and tensors, so ``torch.load(..., weights_only=True)`` can
    read it back without executing anything.

    A learner class that subclasses the protocol gets the defaults below:
    nothing to remember, a block scored as its samples, no cold items.
    """

    name: str
    model_version: int

    def remember(self, samples: Sequence[Sample]) -> Any:
        """Keep what ``samples`` are scored with now; return what :meth:`predict` may reuse."""
        return None

    def predict(self, samples: Sequence[Sample], remembered: Any = None) -> np.ndarray: ...

    def predict_block(self, block: CandidateBlock) -> np.ndarray:
        """``(P, 3)`` predictions of the block's pairs, as :meth:`predict` of its samples."""
        return self.predict(block.samples())

    def predict_block_with_values(
        self, block: CandidateBlock
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`predict_block`, and the expected value of an order of each pair's item by its
        user (currency), or ``None`` if the learner does not model order values."""
        return self.predict_block(block), None

    def learn(self, samples: Sequence[Sample]) -> None: ...

    def users(self) -> Iterable[str]:
        """The users the learner holds state of (what an erasure must reach)."""
        raise NotImplementedError(f"{self.name} does not list its users")

    def forget_user(self, user_id: str) -> None:
        """Erase everything held about ``user_id`` (an erasure request); the default refuses
        rather than pretend (the worker's learner implements it)."""
        raise NotImplementedError(f"{self.name} cannot erase a user")

    def is_cold(self, item_id: str) -> bool:
        """Whether the item's predictions still rest on its content rather than its own data."""
        return False

    def health(self) -> LearnerHealth:
        """Table rows in use and cold items, for the worker's metrics."""
        return LearnerHealth()

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


def score_then_learn(
    learner: Learner, new: Sequence[Sample], labels: Sequence[Sample]
) -> np.ndarray:
    """One prequential step: remember and score the ``new`` samples, then learn ``labels``.

    The scores come from the model as it was before the step's labels, so
    none of a sample's labels is learned before it is scored. The worker and
    every benchmark step their learners with this.
    """
    predictions = learner.predict(new, learner.remember(new)) if new else np.empty((0, 3))
    if labels:
        learner.learn(labels)
    return predictions


def funnel_consistent(predictions: Any, tolerance: float = 1e-9) -> bool:
    """True when every row satisfies ``p_purchase <= p_cart <= p_click``."""
    p = np.asarray(predictions, dtype=float)
    return bool(np.all(p[:, 1] <= p[:, 0] + tolerance) and np.all(p[:, 2] <= p[:, 1] + tolerance))
