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

The bookkeeping is a few numpy arrays indexed by ``key % capacity`` (the
resolver numbers samples in order, so a new key takes the slot of the one
``capacity`` before it) and a heap of batches of deadlines, so a batch costs a
handful of array operations rather than a heap operation per sample.

Example
-------
>>> from online_models.layout import label_matrix
>>> from online_models.labels import TrackedSample
>>> waits = ProvisionalNegatives(waits_ms=(1_000, 5_000, 5_000))
>>> waits.scored([TrackedSample("u1", "i1", ts=0, key=1), TrackedSample("u1", "i2", ts=0, key=2)])
>>> click = TrackedSample("u1", "i1", ts=0, key=1, click=1.0)
>>> waits.admit([click], label_matrix([click])).learn.tolist()
[True]
>>> waits.scored([TrackedSample("u2", "i3", ts=1_500, key=3)])          # time moves on
>>> samples, labels = waits.due()                                        # i2: no click
>>> [s.key for s in samples], labels.tolist()
([2], [[0.0, 0.0, 0.0]])
>>> closure = TrackedSample("u1", "i2", ts=0, key=2, click=0.0, cart=0.0, purchase=0.0)
>>> waits.admit([closure], label_matrix([closure])).learn.tolist()          # learned already
[False]
>>> waits.scored([TrackedSample("u2", "i4", ts=7_000, key=4)])
>>> samples, labels = waits.due()                            # i3: no click; i1: no cart
>>> [s.key for s in samples], labels.tolist()
([3, 1], [[0.0, 0.0, 0.0], [nan, 0.0, 0.0]])
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np

from online_models.base import TASKS, Sample
from online_models.labels import TrackedSample

_FIELDS = (
    "user_id",
    "item_id",
    "ts",
    "category",
    "brand",
    "price",
    "device",
    "weight",
    "key",
    "logit_offset",
)
WAITING_ROW_KEY = 2 + _FIELDS.index("key")
"""Where a waiting sample's row (in :meth:`ProvisionalNegatives.export_keys`) holds its key:
after the awaited stage and the due time, among the sample's fields."""
STAGES = 3
"""Click, cart, purchase: a stage is the index of the label it waits for."""
NONE = -1
"""No stage (in the waiting and assumed arrays), no key (in the key array)."""
_TIME = attrgetter("ts")
_NEGATIVES = np.array(
    [[0.0, 0.0, 0.0], [math.nan, 0.0, 0.0], [math.nan, math.nan, 0.0]], dtype=np.float32
)
"""The labels of a sample assumed negative from each stage on."""


class Admission(NamedTuple):
    """Of the samples offered to :meth:`ProvisionalNegatives.admit`: which to learn, and which
    of those correct a stage learned as negative before."""

    learn: np.ndarray
    corrects: np.ndarray


@dataclass(frozen=True, slots=True)
class _Waits:
    """A batch of waits: when each is due, its slot, key and awaited stage."""

    due: np.ndarray
    slots: np.ndarray
    keys: np.ndarray
    stages: np.ndarray

    def take(self, which: Any) -> _Waits:
        return _Waits(self.due[which], self.slots[which], self.keys[which], self.stages[which])

    @staticmethod
    def concatenate(batches: list[_Waits]) -> _Waits:
        return _Waits(
            np.concatenate([b.due for b in batches]),
            np.concatenate([b.slots for b in batches]),
            np.concatenate([b.keys for b in batches]),
            np.concatenate([b.stages for b in batches]),
        )


class ProvisionalNegatives:
    """Keyed samples waiting for their next funnel label, and those assumed negative.

    Parameters
    ----------
    waits_ms
        Event time a sample waits for its click (from its own time), its cart
        (from when its click was learned) and its purchase (from its cart).
    capacity
        Samples tracked at most (slots of the ring): a key takes over the
        slot of the key ``capacity`` before it, which is then forgotten and
        learned the resolver's way.
    """

    def __init__(self, waits_ms: Sequence[int], capacity: int = 500_000) -> None:
        if len(waits_ms) != STAGES:
            raise ValueError("waits_ms needs one wait per funnel stage")
        self.waits_ms = tuple(waits_ms)
        self.capacity = capacity
        self._changed: list[np.ndarray] | None = None  # noted from the first changed_keys() on
        self._reset()

    def _reset(self) -> None:
        capacity = self.capacity
        self._key = np.full(capacity, NONE, dtype=np.int64)
        self._waiting = np.full(capacity, NONE, dtype=np.int8)  # the stage waited for
        self._assumed = np.full(capacity, NONE, dtype=np.int8)  # the stage learned as negative
        self._due = np.zeros(capacity, dtype=np.int64)
        self._sample = np.empty(capacity, dtype=object)
        self._queue: list[tuple[int, int, _Waits]] = []  # (first due, sequence, batch)
        self._sequence = itertools.count()
        self.now_ms = 0

    def __len__(self) -> int:
        """Samples waiting."""
        return int(np.count_nonzero(self._waiting != NONE))

    def scored(self, samples: Sequence[Sample], until_ms: int | None = None) -> None:
        """Start the click wait of impressions (keyed, no label yet); advance the clock.

        The clock follows the samples' times, never past ``until_ms`` (event
        time, when the caller knows it: one sample stamped far ahead must
        not make every wait due). The samples are kept as they are (not
        copied): do not change them later.
        """
        if not samples:
            return
        times = np.fromiter(map(_TIME, samples), np.int64, len(samples))
        latest = int(times.max())
        self.advance(latest if until_ms is None else min(latest, until_ms))
        keys = _keys(samples)
        fresh = np.flatnonzero(keys >= 0)
        if len(fresh) == 0:
            return
        unlabelled = (
            s.click is None and s.cart is None and s.purchase is None
            for s in [samples[i] for i in fresh.tolist()]
        )
        fresh = fresh[np.fromiter(unlabelled, bool, len(fresh))]
        keys = keys[fresh]
        if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():  # usually in order already
            keys, first = np.unique(keys, return_index=True)
            fresh = fresh[first]
        slots = keys % self.capacity
        tracked = (self._key[slots] == keys) & (
            (self._waiting[slots] != NONE) | (self._assumed[slots] != NONE)
        )
        fresh, keys, slots = fresh[~tracked], keys[~tracked], slots[~tracked]
        self._wait(slots, keys, np.zeros(len(slots), np.int8), times[fresh] + self.waits_ms[0])
        self._sample[slots] = _objects([samples[i] for i in fresh.tolist()])

    def advance(self, now_ms: int) -> None:
        """Move the clock on to event time ``now_ms`` (scoring samples without keys does)."""
        self.now_ms = max(self.now_ms, now_ms)

    def admit(
        self, samples: Sequence[Sample], labels: np.ndarray, until_ms: int | None = None
    ) -> Admission:
        """Which of ``samples`` (with ``labels``, ``(n, 3)``) to learn; moves the waits on.

        Left out: the resolver's negatives for a stage already learned as
        negative. A positive registers the wait for the next stage; one for a
        stage already learned as negative corrects it. The clock follows the
        samples' times, never past ``until_ms`` (see :meth:`scored`).
        """
        admitted = np.ones(len(samples), dtype=bool)
        corrects = np.zeros(len(samples), dtype=bool)
        if not samples:
            return Admission(admitted, corrects)
        times = np.fromiter(map(_TIME, samples), np.int64, len(samples))
        if until_ms is not None:
            times = np.minimum(times, until_ms)
        clock = np.maximum.accumulate(np.maximum(times, self.now_ms))  # as learned one by one
        self.now_ms = int(clock[-1])
        keys = _keys(samples)
        known = ~np.isnan(labels)
        last = np.where(known[:, 2], 2, np.where(known[:, 1], 1, 0))
        label = labels[np.arange(len(samples)), last]
        keyed = np.flatnonzero((keys >= 0) & ~np.isnan(label))
        self._note(keys[keyed])
        for occurrence in _occurrences(keys[keyed]):  # a key twice: in order
            rows = keyed[occurrence]
            slots = keys[rows] % self.capacity
            own = self._key[slots] == keys[rows]
            assumed = np.where(own, self._assumed[slots], NONE)
            self._assumed[slots[own]] = NONE
            was_assumed = assumed != NONE
            value = labels[rows, np.maximum(assumed, 0)]
            dropped = was_assumed & ~(value > 0) & ~np.isnan(value)
            admitted[rows[dropped]] = False
            corrects[rows[was_assumed & (value > 0)]] = True
            self._waiting[slots[own & ~dropped]] = NONE
            moves_on = ~was_assumed & (last[rows] < STAGES - 1) & (label[rows] > 0)
            rows, slots = rows[moves_on], slots[moves_on]
            stage = (last[rows] + 1).astype(np.int8)
            self._wait(slots, keys[rows], stage, clock[rows] + np.take(self.waits_ms, stage))
            self._sample[slots] = _objects([samples[i] for i in rows.tolist()])
        return Admission(admitted, corrects)

    def due(self) -> tuple[list[TrackedSample], np.ndarray]:
        """Samples whose wait is over, and their labels: 0 from the awaited stage on."""
        ready = []
        while self._queue and self._queue[0][0] <= self.now_ms:
            waits = heapq.heappop(self._queue)[2]
            over = int(np.searchsorted(waits.due, self.now_ms, side="right"))
            ready.append(waits.take(slice(None, over)))
            if over < len(waits.due):
                self._push(waits.take(slice(over, None)))
        if not ready:
            return [], np.empty((0, len(TASKS)), dtype=np.float32)
        waits = _Waits.concatenate(ready)
        slots = waits.slots
        current = (
            (self._key[slots] == waits.keys)
            & (self._waiting[slots] == waits.stages)
            & (self._due[slots] == waits.due)
        )
        waits = waits.take(current)
        waits = waits.take(np.lexsort((waits.keys, waits.due)))
        self._note(waits.keys)
        self._assumed[waits.slots] = waits.stages
        self._waiting[waits.slots] = NONE
        return self._sample[waits.slots].tolist(), _NEGATIVES[waits.stages]

    def forget_user(self, user_id: str) -> list[int]:
        """Drop every sample of ``user_id`` waiting or assumed negative; return their keys.

        >>> from online_models.labels import TrackedSample
        >>> waits = ProvisionalNegatives(waits_ms=(1_000, 5_000, 5_000))
        >>> waits.scored([TrackedSample("u1", "i1", 0, key=1), TrackedSample("u2", "i1", 0, key=2)])
        >>> waits.forget_user("u1"), len(waits)
        ([1], 1)
        """
        held = np.flatnonzero(self._sample != None)  # noqa: E711 (elementwise)
        slots = np.array(
            [slot for slot in held.tolist() if self._sample[slot].user_id == user_id], np.int64
        )
        keys = self._key[slots]
        tracked = keys[(self._waiting[slots] != NONE) | (self._assumed[slots] != NONE)]
        self._forget_slots(slots)
        return tracked.tolist()

    def forget_keys(self, keys: Iterable[int]) -> list[int]:
        """Drop these samples, waiting or assumed negative; return the keys that were tracked.

        >>> from online_models.labels import TrackedSample
        >>> waits = ProvisionalNegatives(waits_ms=(1_000, 5_000, 5_000))
        >>> waits.scored([TrackedSample("u1", "i1", 0, key=1), TrackedSample("u2", "i1", 0, key=2)])
        >>> waits.forget_keys([2, 5]), len(waits)
        ([2], 1)
        """
        slots = self._tracked_slots(keys)
        tracked = self._key[slots].tolist()
        self._forget_slots(slots)
        return tracked

    def export_keys(
        self, keys: Iterable[int], like: Callable[[int], Sample | None] | None = None
    ) -> dict[str, Any]:
        """What :meth:`state_dict` holds of these samples (those tracked), without the clock.

        With ``like``: a waiting sample equal in every field to ``like(key)``
        (the sample a receiver holds already) is written short, under
        ``waiting_like``, as its stage, due time and key (:func:`waiting_row_like`
        writes it out again).

        >>> from online_models.labels import TrackedSample
        >>> waits = ProvisionalNegatives(waits_ms=(1_000, 5_000, 5_000))
        >>> shown = TrackedSample("u1", "i1", ts=0, key=1)
        >>> waits.scored([shown, TrackedSample("u1", "i2", ts=0, key=2)])
        >>> rows = waits.export_keys([1, 2], like={1: shown}.get)
        >>> rows["waiting_like"], [row[WAITING_ROW_KEY] for row in rows["waiting"]]
        ([[0, 1000, 1]], [2])
        >>> whole = waits.export_keys([1])["waiting"][0]
        >>> waiting_row_like(rows["waiting_like"][0], {1: shown}.get) == whole
        True
        """
        rows = self._rows(self._tracked_slots(keys))
        if like is None:
            return rows
        waiting, short = [], []
        for row in rows["waiting"]:
            stage, due, key = row[0], row[1], row[WAITING_ROW_KEY]
            sample = like(key)
            if sample is not None and row == waiting_row(stage, due, sample):
                short.append([stage, due, key])
            else:
                waiting.append(row)
        return {**rows, "waiting": waiting, "waiting_like": short}

    def import_rows(self, rows: dict[str, Any], keys: Mapping[int, int]) -> None:
        """Track the samples of another's :meth:`export_keys`, each under the key ``keys`` maps
        its old one to; their waits stay due when they were there (event time)."""
        self._add(rows, keys.__getitem__)

    def _tracked_slots(self, keys: Iterable[int]) -> np.ndarray:
        """The slots of those ``keys`` that wait or are assumed negative."""
        keys = np.fromiter(keys, np.int64)
        slots = keys % self.capacity
        own = self._key[slots] == keys
        tracked = own & ((self._waiting[slots] != NONE) | (self._assumed[slots] != NONE))
        return slots[tracked]

    def _forget_slots(self, slots: np.ndarray) -> None:
        self._note(self._key[slots])
        self._key[slots] = NONE  # their queued waits no longer match: skipped when due
        self._waiting[slots] = NONE
        self._assumed[slots] = NONE
        self._sample[slots] = None

    def _wait(
        self, slots: np.ndarray, keys: np.ndarray, stages: np.ndarray, due: np.ndarray
    ) -> None:
        """Make ``keys`` (taking over their slots) wait for ``stages`` until ``due``."""
        if len(slots) == 0:
            return
        if self._changed is not None:  # and the keys whose slots they take over
            self._changed += (keys, self._key[slots])
        self._key[slots] = keys
        self._waiting[slots] = stages
        self._assumed[slots] = NONE
        self._due[slots] = due
        order = np.argsort(due, kind="stable")
        self._push(_Waits(due[order], slots[order], keys[order], stages[order]))

    def _push(self, waits: _Waits) -> None:
        """Queue a due-sorted batch of waits (ones replaced since are skipped when due)."""
        heapq.heappush(self._queue, (int(waits.due[0]), next(self._sequence), waits))

    def state_dict(self) -> dict[str, Any]:
        """Waiting samples (as field lists), assumed stages and the clock."""
        return {**self._rows(np.arange(self.capacity)), "now_ms": self.now_ms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what :meth:`state_dict` saved."""
        self._reset()
        self._add(state, int)
        self.now_ms = int(state["now_ms"])

    def _rows(self, slots: np.ndarray) -> dict[str, Any]:
        """The waiting and assumed samples among ``slots``, as plain values."""
        waiting = slots[self._waiting[slots] != NONE]
        assumed = slots[self._assumed[slots] != NONE]
        return {
            "waiting": [
                waiting_row(int(self._waiting[slot]), int(self._due[slot]), self._sample[slot])
                for slot in waiting.tolist()
            ],
            "assumed": [[int(self._key[slot]), int(self._assumed[slot])] for slot in assumed],
        }

    def _add(self, rows: dict[str, Any], rekey: Callable[[int], int]) -> None:
        """Track the samples of :meth:`_rows`, under the keys ``rekey`` gives."""
        for stage, due, *fields in rows["waiting"]:
            sample = TrackedSample(**dict(zip(_FIELDS, fields, strict=False)))  # older: no offset
            sample.key = rekey(sample.key)
            slot = np.array([sample.key % self.capacity])
            self._wait(slot, np.array([sample.key]), np.array([stage], np.int8), np.array([due]))
            self._sample[slot[0]] = sample
        for key, stage in rows["assumed"]:
            key = rekey(key)
            slot = key % self.capacity
            self._note(np.array([key, self._key[slot]]))
            self._key[slot], self._assumed[slot] = key, stage

    def changed_keys(self) -> list[int]:
        """The keys whose wait or assumed stage changed since the previous call (noted from
        the first call on, which returns none), ascending; some may be unchanged or untracked.

        >>> from online_models.labels import TrackedSample
        >>> waits = ProvisionalNegatives(waits_ms=(1_000, 5_000, 5_000))
        >>> waits.changed_keys()
        []
        >>> waits.scored([TrackedSample("u1", "i1", 0, key=4), TrackedSample("u2", "i1", 0, key=2)])
        >>> waits.changed_keys(), waits.changed_keys()
        ([2, 4], [])
        """
        changed, self._changed = self._changed or [], []
        if not changed:
            return []
        keys = np.unique(np.concatenate(changed))
        return keys[keys != NONE].tolist()

    def _note(self, keys: np.ndarray) -> None:
        """Note that these keys' waits or assumed stages change (once :meth:`changed_keys`
        was called)."""
        if self._changed is not None:
            self._changed.append(keys)


def waiting_row(stage: int, due: int, sample: Sample) -> list[Any]:
    """A sample waiting for ``stage`` until ``due``, as :meth:`ProvisionalNegatives.export_keys`
    writes it."""
    return [stage, due, *[getattr(sample, name) for name in _FIELDS]]


def waiting_row_like(short: list[Any], like: Callable[[int], Sample]) -> list[Any]:
    """The whole row of a waiting sample :meth:`ProvisionalNegatives.export_keys` wrote short,
    given ``like``, the samples (by key) it was written short against."""
    stage, due, key = short
    return waiting_row(stage, due, like(key))


def _objects(items: list[Any]) -> np.ndarray:
    """``items`` as a 1-d object array (~10x faster than numpy's own conversion of a list)."""
    return np.fromiter(items, dtype=object, count=len(items))


def _keys(samples: Sequence[Sample]) -> np.ndarray:
    """Each sample's resolver key, -1 for samples without one."""
    return np.fromiter(map(getattr, samples, repeat("key"), repeat(NONE)), np.int64, len(samples))


def _occurrences(keys: np.ndarray) -> list[np.ndarray]:
    """Positions of ``keys`` split into rounds: first occurrences, second ones, ..."""
    if len(keys) == 0:
        return []
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    rank = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    return [np.sort(order[rank == r]) for r in range(int(rank.max()) + 1)]
