"""Delayed feedback: learn "not yet" as "no" after a short wait, not at window close.

With impressions, the label resolver emits a positive as soon as it happens
(a click seconds after the impression, a cart minutes after the click) but a
negative only when the attribution window closes (10 and 60 minutes by
default). A learner fed that way sees every recent positive long before the
matching negatives and learns the timing instead of the shop: on the
simulated shop, prequential click AUC fell from 0.784 (labels learned at once)
to 0.761, while delaying positives and negatives alike by ten minutes costs
only 0.008.

:class:`ProvisionalNegatives` restores the symmetry the way production
systems do -- a waiting window, then a fake negative (Ktena et al.,
"Addressing Delayed Feedback for Continuous Training with Neural Networks in
CTR Prediction", RecSys 2019, https://arxiv.org/abs/1907.06558; Yang et al.,
"Capturing Delayed Feedback in Conversion Rate Prediction via Elapsed-Time
Sampling", AAAI 2021, https://arxiv.org/abs/2012.03245):

- a scored impression (a sample with a resolver ``key`` and no click label)
  that has waited ``waits_ms[0]`` of event time without a click is learned
  then as (0, 0, 0);
- a learned click waits ``waits_ms[1]`` for its cart, then is learned as
  (-, 0, 0); a learned cart waits ``waits_ms[2]`` for its purchase, then
  (-, -, 0).

The resolver's own negative for that stage, arriving at window close, is then
dropped (already learned); a positive arriving after the wait is still
learned (so that stage counts it twice, as in fake-negative training: keep
the waits above the usual delays). Samples without a key pass through.

Example
-------
>>> from online_models.labels import TrackedSample
>>> waits = ProvisionalNegatives(waits_ms=(1_000, 5_000, 5_000))
>>> waits.scored([TrackedSample("u1", "i1", ts=0, key=1), TrackedSample("u1", "i2", ts=0, key=2)])
>>> [s.key for s in waits.admit([TrackedSample("u1", "i1", ts=0, key=1, click=1.0)])]
[1]
>>> waits.scored([TrackedSample("u2", "i3", ts=1_500, key=3)])          # time moves on
>>> [(s.key, s.labels()) for s in waits.due()]                           # i2: no click
[(2, (0.0, 0.0, 0.0))]
>>> waits.admit([TrackedSample("u1", "i2", ts=0, key=2, click=0.0, cart=0.0, purchase=0.0)])
[]
>>> waits.scored([TrackedSample("u2", "i4", ts=7_000, key=4)])
>>> [(s.key, s.labels()) for s in waits.due()]              # i3: no click; i1: no cart
[(3, (0.0, 0.0, 0.0)), (1, (None, 0.0, 0.0))]
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

from online_models.base import Sample
from online_models.labels import TrackedSample

_FIELDS = ("user_id", "item_id", "ts", "category", "brand", "price", "device", "weight", "key")
STAGES = 3
"""Click, cart, purchase: a stage is the index of the label it waits for."""


class ProvisionalNegatives:
    """Keyed samples waiting for their next funnel label, and those assumed negative.

    Parameters
    ----------
    waits_ms
        Event time a sample waits for its click (from its own time), its cart
        (from when its click was learned) and its purchase (from its cart).
    capacity
        Samples tracked at most; beyond it the oldest are forgotten and
        learned the resolver's way.
    """

    def __init__(self, waits_ms: Sequence[int], capacity: int = 500_000) -> None:
        if len(waits_ms) != STAGES:
            raise ValueError("waits_ms needs one wait per funnel stage")
        self.waits_ms = tuple(waits_ms)
        self.capacity = capacity
        self._waiting: dict[int, tuple[int, int, TrackedSample]] = {}  # key: stage, due, sample
        self._queue: list[tuple[int, int, int]] = []  # (due, key, stage), stale entries skipped
        self._assumed: dict[int, int] = {}  # key: the stage learned as negative
        self.now_ms = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def scored(self, samples: Sequence[Sample]) -> None:
        """Start the click wait of impressions (keyed, no label yet); advance the clock.

        The samples are kept as they are (not copied): do not change them later.
        """
        if not samples:
            return
        wait = self.waits_ms[0]
        waiting, assumed, queue = self._waiting, self._assumed, self._queue
        for sample, key in zip(samples, _keys(samples), strict=True):
            if key < 0 or key in waiting or key in assumed or _labelled(sample):
                continue
            due = sample.ts + wait
            waiting[key] = (0, due, sample)
            heapq.heappush(queue, (due, key, 0))
        self.now_ms = max(self.now_ms, max(s.ts for s in samples))
        self._bound()

    def admit(self, samples: Sequence[Sample]) -> list[Sample]:
        """``samples`` minus the negatives already learned provisionally; moves the waits on."""
        if not samples:
            return []
        admitted = []
        waiting, queue, assumed_stages = self._waiting, self._queue, self._assumed
        now = self.now_ms
        for sample, key in zip(samples, _keys(samples), strict=True):
            now = max(now, sample.ts)
            click, cart, purchase = sample.click, sample.cart, sample.purchase
            if purchase is not None:
                last, label = 2, purchase
            elif cart is not None:
                last, label = 1, cart
            else:
                last, label = 0, click
            if key < 0 or label is None:
                admitted.append(sample)
                continue
            assumed = assumed_stages.pop(key, None)
            if assumed is not None:
                value = (click, cart, purchase)[assumed]
                if value is not None and not value > 0:
                    continue  # the window's own negative for what was learned as negative
            waiting.pop(key, None)
            if assumed is None and last < STAGES - 1 and label > 0:
                due = now + self.waits_ms[last + 1]
                waiting[key] = (last + 1, due, sample)
                heapq.heappush(queue, (due, key, last + 1))
            admitted.append(sample)
        self.now_ms = now
        self._bound()
        return admitted

    def due(self) -> list[TrackedSample]:
        """Samples whose wait is over, labelled 0 from the awaited stage on."""
        due = []
        queue, waiting, assumed = self._queue, self._waiting, self._assumed
        while queue and queue[0][0] <= self.now_ms:
            _, key, stage = heapq.heappop(queue)
            entry = waiting.get(key)
            if entry is None or entry[0] != stage:
                continue
            del waiting[key]
            assumed[key] = stage
            due.append(_negative_from(entry[2], stage))
        self._bound()
        return due

    def _bound(self) -> None:
        """Forget the oldest entries beyond ``capacity`` (stale queue entries are skipped)."""
        for tracked in (self._waiting, self._assumed):
            while len(tracked) > self.capacity:
                del tracked[next(iter(tracked))]

    def state_dict(self) -> dict[str, Any]:
        """Waiting samples (as field lists), assumed stages and the clock."""
        return {
            "waiting": [
                [stage, due, *(getattr(sample, f) for f in _FIELDS)]
                for stage, due, sample in self._waiting.values()
            ],
            "assumed": [[key, stage] for key, stage in self._assumed.items()],
            "now_ms": self.now_ms,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what :meth:`state_dict` saved."""
        self._waiting, self._queue = {}, []
        for stage, due, *fields in state["waiting"]:
            sample = TrackedSample(**dict(zip(_FIELDS, fields, strict=True)))
            self._waiting[sample.key] = (stage, due, sample)
            self._queue.append((due, sample.key, stage))
        heapq.heapify(self._queue)
        self._assumed = {key: stage for key, stage in state["assumed"]}
        self.now_ms = int(state["now_ms"])


def _keys(samples: Sequence[Sample]) -> list[int]:
    """Each sample's resolver key, -1 for samples without one."""
    return [getattr(s, "key", -1) for s in samples]


def _labelled(sample: Sample) -> bool:
    return sample.click is not None or sample.cart is not None or sample.purchase is not None


def _negative_from(sample: TrackedSample, stage: int) -> TrackedSample:
    """``sample`` labelled 0 from ``stage`` on, unknown before it."""
    return TrackedSample(
        user_id=sample.user_id,
        item_id=sample.item_id,
        ts=sample.ts,
        category=sample.category,
        brand=sample.brand,
        price=sample.price,
        device=sample.device,
        click=0.0 if stage == 0 else None,
        cart=0.0 if stage <= 1 else None,
        purchase=0.0,
        weight=sample.weight,
        key=sample.key,
    )
