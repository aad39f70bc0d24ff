"""Funnel events into labelled samples: impressions, delayed labels, sampled negatives.

One :class:`LabelResolver` sits between the event stream and every learner
(the quality bench and the stream worker share it). It is pure: no clock, no
I/O; event time is the only time it knows (the largest ``ts`` seen, or what
:meth:`LabelResolver.advance` is told).

What a caller gets
------------------
``observe(event)`` returns a :class:`Resolution` with two lists:

- ``new``: samples that exist from now on. Score them *now*, before anything
  of theirs is learned (prequential evaluation). Learn whatever labels they
  already carry (an impression carries none yet; a click without an
  impression carries ``click=1``; a sampled negative carries all three zeros).
- ``resolved``: label updates of samples emitted earlier, with the same
  ``key``. Learn them. Only the labels resolved *now* are set; the others are
  ``None`` (already learned, or still pending).

Each (key, task) label is emitted exactly once over the stream, so nothing is
learned twice. Labels are entire-space (``cart=1`` means clicked and carted)
and follow one rule a learner may rely on: **a stage's label is emitted after
its predecessor's only if the predecessor was 1**. A 0 always comes with 0s
for every later stage in the same emission. So an update with ``click=None``
and ``cart`` set belongs to a clicked sample, and an update with ``cart=None``
and ``purchase`` set to a carted one: conditional models (``p(cart|click)``)
can learn from updates alone.

With impressions (``LabelConfig.impressions=True``)
    Each impression opens a sample. A click on that (user, item) within
    ``click_window_ms`` of event time resolves ``click=1`` at once; cart and
    purchase within ``conversion_window_ms`` of the click resolve to 1 when
    they arrive. When a window closes, every label still open resolves to 0.
    A cart or purchase with no click seen implies the click (and a purchase
    with no cart seen implies the cart): the missing stages resolve to 1
    together. A funnel event with no open sample at all opens a new sample
    whose labels up to that stage are 1.
Without impressions (``impressions=False``)
    Each click (or implied click) is a new positive sample and
    ``negatives_per_click`` negatives are sampled for the same user, time and
    device, all labels 0. Impression events, if any arrive, are ignored.

Negative sampling and its correction
------------------------------------
Without impressions a click is a positive, and its ``negatives_per_click``
negatives are drawn **in-batch** (Yi et al., RecSys 2019): from the items
clicked in the same micro-batch, one entry per click, so an item is drawn
with its share of the batch's clicks (never the clicked item itself, nor an
item the user has an open sample for). Drawing from a pool of items seen
*before* the click let a model win by telling "new to the pool" from "seen"
(on a Taobao slice 78% of clicks go to items never seen before, and ID
models fell below chance): every sample of a batch is encoded with the same
state, so a batch's negatives are as new as its positives. The positives of
a batch and their negatives are made when the batch closes
(:meth:`LabelResolver.close_batch`), all at once.

Each positive and negative carries ``logit_offset = -log(k Q(j))``, the
sampling-probability correction: a learner adds it to its click logit while
it learns, and never when it serves. The odds that a pair is a positive are
``P(j | u) / (k Q(j))``, so with the offset the learned score ranks items by
how likely the user is to click them, not by how rarely they are drawn as
negatives (in-batch ``Q`` is popularity, which the score would otherwise
cancel). ``Q(j)`` is the item's share of the last ``negative_pool_items``
clicks within ``negative_pool_ms`` of event time
(:class:`~online_models.click_shares.ClickShares`), as Yi et al. estimate
it over the stream: a window of a few dozen clicks gives nearly every item
one click in n, and a correction that no longer tells popular from niche.
On the simulator without impressions (seed 7, 5-s windows of about 20
clicks) the served lists bring 3.91 expected clicks with ``Q`` from the
window, 4.51 with ``Q`` over the last 2,048 clicks, and 3.54 over the last
50,000 (popularity moves on). A micro-batch whose clicks
hold fewer than ``negative_window_items`` distinct items keeps them for the
next ones: a worker at a trickle (a few events per batch wait) draws from a
window of several batches, whose items are as new as its positives. Drawing
such a batch's negatives from earlier clicks made every negative an item
seen before (on the bundled Taobao sample, replayed in 10-s micro-batches,
the leak check's AUC was 0.91; 0.51 with windows). A cart or purchase of a
waiting click is written into it, so its positive comes with every label
known by then. A window is drawn however small once its first click is
``negative_window_ms`` old (then from the last ``negative_pool_items``
clicks if it holds a single item), and at the end of a finite stream
(``close_batch(final=True)``). Scores from a no-impression stream are
ranking scores: their scale is not a click rate.

Bounded memory
--------------
Open samples are closed (labels to 0) when their window passes in event time,
or earliest-deadline first when more than ``max_pending`` are open. Event ids
are remembered for the last ``dedupe_events`` events (a duplicate within that
span is applied once). The item catalog keeps the ``max_catalog_items`` most
recently updated items. The last ``negative_pool_items`` clicked items are kept
(for ``Q``).

Open samples, remembered event ids and watermarks are tagged with their
partition, so a partition's part moves to another worker on its own
(:meth:`LabelResolver.export_partition`), or goes to the other workers as it
changes (:meth:`LabelResolver.partition_changes`).

Example
-------
>>> from producers.contract import Event, ItemContent
>>> resolver = LabelResolver(LabelConfig(click_window_ms=1_000, conversion_window_ms=5_000))
>>> phone = ItemContent(category="electronics.phone", brand="acme", price=199.0)
>>> shown = resolver.observe(Event("e1", 1_000, "impression", "u1", "i9", item=phone))
>>> [(s.key, s.labels()) for s in shown.new]
[(0, (None, None, None))]
>>> clicked = resolver.observe(Event("e2", 1_500, "click", "u1", "i9"))
>>> [(s.key, s.labels(), s.category) for s in clicked.resolved]
[(0, (1.0, None, None), 'electronics.phone')]
>>> resolver.observe(Event("e2", 1_500, "click", "u1", "i9")).resolved  # duplicate
[]
>>> [(s.key, s.labels()) for s in resolver.advance(10_000)]  # window closed
[(0, (None, 0.0, 0.0))]
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from online_models.base import Sample
from online_models.catalog import Catalog
from online_models.click_shares import ClickShares
from producers.contract import CatalogItem, Event, ItemContent

SHOWN, CLICKED, CARTED, PURCHASED = 0, 1, 2, 3
"""Funnel stages of an open sample; a stage's number is how many labels are 1."""

STAGE_OF_EVENT: dict[str, int] = {"click": CLICKED, "cart": CARTED, "purchase": PURCHASED}
_NO_LABELS = (None, None, None)
UNKNOWN_PARTITION = -1
"""The partition of samples restored from checkpoints that did not record it."""


OPEN_ROW_KEY = 0
"""Where an open sample's row (in :meth:`LabelResolver.export_partition`) holds its key."""

HANDOVER_IDS = 5_000
"""Event ids of a partition handed over with it: a repeat sent within about this many of
the partition's events of its first copy is still caught by the worker that takes it over
(10 s of a partition at the demo's 2,000 events/s over 4; the whole window stays local)."""


@dataclass(frozen=True, slots=True)
class LabelConfig:
    """How events become samples (see the module docstring for the rules).

    Attributes
    ----------
    impressions
        True when the stream carries impressions (true negatives).
    click_window_ms
        Event time after an impression during which a click is attributed to it.
    conversion_window_ms
        Event time after a click during which its cart and purchase count.
    negatives_per_click
        Sampled negatives per click, without impressions.
    negative_window_items
        Distinct clicked items a window of clicks holds before its positives
        and negatives are made (micro-batches with fewer wait for the next).
    negative_window_ms
        Event time after which a window's clicks are drawn however few.
    negative_pool_items
        Recent clicks kept: an item's share of them is its sampling
        probability ``Q``, and a window of a single item draws from them.
    negative_pool_ms
        Event time a recent click is kept for at most.
    dedupe_events
        How many recent event ids are remembered to drop duplicates (one id
        costs ~145 bytes with a 36-character id: 200,000 take ~29 MB).
    max_skew_ms
        How far ahead of the leading partition's watermark an event's ``ts``
        may be; a later one is clamped to that bound (see :class:`EventClock`).
    idle_partition_ms
        How far a partition's watermark may fall behind the leading one and
        still hold event time back.
    max_pending
        Open samples kept at most; beyond it the earliest deadline closes first.
    max_catalog_items
        Item contents kept at most (least recently updated dropped first).
    provisional_waits_ms
        Event time a shown item waits for its click, a click for its cart and
        a cart for its purchase before the label stage has every model learn
        the missing step as 0 (:mod:`online_models.feedback`); ``None`` learns
        labels only as the resolver gives them. Defaults: clicks come within
        seconds; the simulated shop's carts and purchases within 30 minutes
        of the step before, half the 60-minute conversion window.
    seed
        Seed of the negative sampler.
    """

    impressions: bool = True
    click_window_ms: int = 10 * 60_000
    conversion_window_ms: int = 60 * 60_000
    negatives_per_click: int = 4
    negative_window_items: int = 16
    negative_window_ms: int = 60 * 60_000
    negative_pool_items: int = 2_048
    negative_pool_ms: int = 60 * 60_000
    dedupe_events: int = 200_000
    max_skew_ms: int = 5 * 60_000
    idle_partition_ms: int = 10 * 60_000
    max_pending: int = 500_000
    max_catalog_items: int = 1_000_000
    provisional_waits_ms: tuple[int, int, int] | None = (60_000, 1_800_000, 1_800_000)
    seed: int = 0


@dataclass(slots=True)
class TrackedSample(Sample):
    """A :class:`Sample` with the ``key`` its later label updates share."""

    key: int = -1


_SAMPLE_FIELDS = tuple(f.name for f in fields(TrackedSample))
_SAMPLE_FIELDS_BEFORE_VALUE = tuple(name for name in _SAMPLE_FIELDS if name != "value")


@dataclass(slots=True)
class Resolution:
    """What one observed event (or a clock advance) produced.

    ``new`` are to be scored now, then their known labels learned;
    ``resolved`` are label updates of earlier samples, to be learned;
    ``duplicate`` is True when the event was seen before and ignored;
    ``event`` is the event as applied (its ``ts`` clamped to the skew bound),
    None for a duplicate or a clock advance.
    """

    new: list[TrackedSample] = field(default_factory=list)
    resolved: list[TrackedSample] = field(default_factory=list)
    duplicate: bool = False
    event: Event | None = None

    def to_learn(self) -> list[TrackedSample]:
        """The samples carrying at least one label: new ones first, then updates."""
        return [s for s in self.new if (s.click, s.cart, s.purchase) != _NO_LABELS] + self.resolved


@dataclass(slots=True)
class _Changes:
    """What changed in one partition since its last :meth:`LabelResolver.partition_changes`:
    the keys of samples opened, changed or gone, and event ids remembered and forgotten."""

    keys: set[int] = field(default_factory=set)
    ids: list[str] = field(default_factory=list)
    forgotten_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Open:
    """A sample whose later labels are still pending."""

    sample: TrackedSample
    stage: int
    deadline: int
    partition: int = UNKNOWN_PARTITION


class EventClock:
    """Event time from per-partition watermarks: one bad clock cannot move it far.

    Each partition's watermark is the largest ``ts`` applied from it. The
    clock (:attr:`now`) is the smallest watermark among *active* partitions,
    those within ``idle_ms`` of the leading one, and never goes back: a
    lagging partition holds event time back by at most ``idle_ms``, and an
    idle one drops out of the minimum once the others are that far ahead. An
    event stamped more than ``max_skew_ms`` ahead of the leading watermark
    is clamped to that bound (:meth:`stamp`), so a far-future timestamp moves
    event time by ``max_skew_ms`` at most; unless the event just before it
    was clamped too and came from another partition (or there is only one):
    then event time really jumped (a quiet spell), and the jump is taken.

    A sample's label windows close on its own partition's time
    (:meth:`closing_time`, the largest ``ts`` it sent that was not clamped):
    events are keyed by user, so its later events come from the same
    partition, however far behind the others that one runs. A partition that
    has gone silent (no event while the leading watermark moved ``idle_ms``)
    closes its windows on :attr:`now` instead.

    >>> clock = EventClock(max_skew_ms=300_000, idle_ms=600_000)
    >>> clock.stamp(0, 1_000), clock.stamp(1, 2_000), clock.now
    (1000, 2000, 1000)
    >>> clock.stamp(1, 86_400_000)  # a day ahead: clamped to 2,000 + 300,000
    302000
    >>> clock.now  # partition 0 is 301 s behind: still active, still the minimum
    1000
    >>> clock.stamp(1, 700_000), clock.now  # partition 0 now idle: dropped out
    (602000, 602000)
    >>> clock.stamp(1, 2_000_000), clock.stamp(0, 2_000_100)  # a jump, confirmed
    (902000, 2000100)
    >>> clock.stamp(2, 1_000_000), clock.closing_time(2)  # far behind, but sending: its own
    (1000000, 1000000)
    >>> for ts in (2_250_000, 2_550_000, 2_700_000):  # partition 2 silent while 700 s go by
    ...     _ = clock.stamp(0, ts)
    >>> clock.closing_time(2)  # then: on event time
    2700000
    """

    def __init__(self, max_skew_ms: int, idle_ms: int) -> None:
        self.max_skew_ms = max_skew_ms
        self.idle_ms = idle_ms
        self._marks: dict[int, int] = {}
        self._front = -1  # the leading watermark, max(self._marks.values())
        self._arrived: dict[int, int] = {}  # the leading watermark when each partition last sent
        self._closing: dict[int, int] = {}  # per partition, the largest ts not clamped
        self._now = -1
        self._forced = -1  # the latest time given to advance()
        self._clamped_from: int | None = None

    @property
    def now(self) -> int:
        """The event time reached (ms), -1 before the first event."""
        return self._now

    def stamp(self, partition: int, ts: int) -> int:
        """Apply an event's ``ts`` from ``partition``; return it clamped to the skew bound."""
        marks, front = self._marks, self._front
        if front >= 0 and ts > front + self.max_skew_ms and not self._confirms(partition):
            ts, self._clamped_from = front + self.max_skew_ms, partition
        else:
            self._clamped_from = None
            if ts > self._closing.get(partition, -1):
                self._closing[partition] = ts
        if ts <= marks.get(partition, -1):
            self._arrived[partition] = front
            return ts  # no watermark moves: neither does the clock
        marks[partition] = ts
        if ts > front:
            self._front = front = ts
        self._arrived[partition] = front
        if len(marks) == 1:
            self._now = max(self._now, ts)
            return ts
        floor = front - self.idle_ms
        active = min(mark for mark in marks.values() if mark >= floor)
        self._now = max(self._now, active)
        return ts

    def _confirms(self, partition: int) -> bool:
        """Whether an event beyond the bound from ``partition`` confirms the one clamped before."""
        if self._clamped_from is None:
            return False
        return partition != self._clamped_from or len(self._marks) == 1

    def mark(self, partition: int) -> int | None:
        """The largest ``ts`` applied from ``partition`` (None before its first event)."""
        return self._marks.get(partition)

    def advance(self, now_ms: int) -> None:
        """Move the clock to ``now_ms`` (never back) without an event; windows close to it."""
        self._now = max(self._now, now_ms)
        self._forced = max(self._forced, now_ms)

    def closing_time(self, partition: int) -> int:
        """The time up to which windows of samples from ``partition`` have passed."""
        own = max(self._closing.get(partition, -1), self._forced)
        if self._arrived.get(partition, -1) >= self._front - self.idle_ms:
            return own  # still sending: its own time, however far behind
        return max(own, self._now)

    def export_partition(self, partition: int) -> dict[str, int] | None:
        """The partition's watermark, closing time and arrival (None before its first event)."""
        if partition not in self._marks:
            return None
        return {
            "mark": self._marks[partition],
            "arrived": self._arrived.get(partition, self._front),
            "closing": self._closing.get(partition, -1),
        }

    def import_partition(self, partition: int, state: dict[str, int] | None) -> None:
        """Take the partition's times from :meth:`export_partition` (another clock's).

        The clock's own time (:attr:`now`) does not go back; it follows at the next event.
        """
        self.drop_partition(partition)
        if state is None:
            return
        self._marks[partition] = int(state["mark"])
        self._arrived[partition] = int(state["arrived"])
        self._closing[partition] = int(state["closing"])
        self._front = max(self._front, self._marks[partition])

    def drop_partition(self, partition: int) -> None:
        """Forget the partition's times (it moved to another worker)."""
        self._marks.pop(partition, None)
        self._arrived.pop(partition, None)
        self._closing.pop(partition, None)
        self._front = max(self._marks.values(), default=-1)
        if self._clamped_from == partition:
            self._clamped_from = None

    def state_dict(self) -> dict[str, Any]:
        """The watermarks and the clock, as plain values."""
        return {
            "marks": [[p, mark] for p, mark in self._marks.items()],
            "arrived": [[p, front] for p, front in self._arrived.items()],
            "closing": [[p, ts] for p, ts in self._closing.items()],
            "now": self._now,
            "forced": self._forced,
            "clamped_from": self._clamped_from,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        self._marks = {int(p): int(mark) for p, mark in state["marks"]}
        self._front = max(self._marks.values(), default=-1)
        arrived = state.get("arrived", [[p, self._front] for p in self._marks])
        self._arrived = {int(p): int(front) for p, front in arrived}
        self._closing = {int(p): int(ts) for p, ts in state.get("closing", state["marks"])}
        self._now = int(state["now"])
        self._forced = int(state.get("forced", -1))
        self._clamped_from = state.get("clamped_from")


class LabelResolver:
    """Turns events into :class:`TrackedSample` s and resolves their delayed labels.

    Parameters
    ----------
    config
        The windows, sampling and memory bounds.
    catalog
        The item catalog it reads content from and adds events' content to
        (shared with the candidate pool in the worker; saved by its owner,
        not in :meth:`state_dict`); a catalog of its own if not given.
    """

    def __init__(self, config: LabelConfig | None = None, catalog: Catalog | None = None) -> None:
        self.config = config or LabelConfig()
        self.catalog = catalog if catalog is not None else Catalog(self.config.max_catalog_items)
        self._rng = random.Random(self.config.seed)
        self._next_key = 0
        self._clock = EventClock(self.config.max_skew_ms, self.config.idle_partition_ms)
        self._open: dict[int, _Open] = {}
        self._open_by_pair: dict[tuple[str, str], list[int]] = {}
        self._deadlines: dict[int, list[tuple[int, int]]] = {}  # per partition, a heap
        self._seen_ids: dict[str, int] = {}  # event id -> the partition it came from
        self._seen_order: deque[str] = deque()
        self._recent_clicks = ClickShares(
            self.config.negative_pool_items, self.config.negative_pool_ms
        )
        self._batch = _BatchClicks()  # positives made when the batch closes
        self._changes: dict[int, _Changes] = {}  # of partitions whose changes are asked for
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "duplicates",
                "repeats",
                "negatives",
                "ignored_impressions",
                "forced_closes",
                "clamped",
            ),
            0,
        )

    # ------------------------------------------------------------ public

    @property
    def open_samples(self) -> int:
        """How many samples still wait for labels."""
        return len(self._open)

    @property
    def watermark(self) -> int:
        """The event time reached (ms, see :class:`EventClock`), -1 before the first event."""
        return self._clock.now

    def partition_watermark(self, partition: int) -> int | None:
        """The largest event time applied from ``partition`` (None before its first event)."""
        return self._clock.mark(partition)

    @property
    def remembered_ids(self) -> int:
        """How many event ids are remembered for deduplication (at most ``dedupe_events``)."""
        return len(self._seen_order)

    def observe_catalog(self, item: CatalogItem) -> None:
        """Remember an item's content for samples of it that come without one."""
        self.catalog.describe(item)

    def observe(self, event: Event, partition: int = 0) -> Resolution:
        """Apply one event read from ``partition``: windows it closes first, then the event."""
        out = Resolution()
        if self._is_duplicate(event.event_id, partition):
            self.counts["duplicates"] += 1
            out.duplicate = True
            return out
        out.event = event = self._stamped(event, partition)
        self._close_passed(out.resolved)
        if event.item is not None:
            self.catalog.remember(event.item_id, event.item)
        if event.type == "impression":
            if self.config.impressions:
                sample = self._new_sample(event, (None, None, None))
                deadline = event.ts + self.config.click_window_ms
                self._keep_open(sample, SHOWN, deadline, partition, out)
                out.new.append(sample)
            else:
                self.counts["ignored_impressions"] += 1
        else:
            self._apply_funnel_event(event, STAGE_OF_EVENT[event.type], partition, out)
        return out

    @property
    def clicks_in_batch(self) -> int:
        """Clicks waiting for :meth:`close_batch` (each becomes ``1 + negatives_per_click``
        samples there)."""
        return len(self._batch)

    def close_batch(self, final: bool = False) -> list[TrackedSample]:
        """The batch's clicks as positives, each followed by its in-batch negatives, all new.

        Without impressions, call it once per micro-batch, after its events
        and before scoring (see the module docstring); with impressions it
        returns nothing. Clicks of fewer than ``negative_window_items``
        distinct items wait for the next micro-batches', unless the first of
        them is ``negative_window_ms`` old in event time or ``final`` (the
        end of a finite stream) says to draw now.
        """
        clicks = self._batch.samples()
        if not clicks:
            return []
        drawn = [s.item_id for s in clicks]  # one entry per click: drawn with its share
        if not final and not self._window_full(clicks, drawn):
            return []
        self._batch = _BatchClicks()
        recent = self._recent_clicks
        recent.extend(drawn, self._clock.now)
        if len(set(drawn)) < 2:
            drawn = list(recent)
        k = self.config.negatives_per_click
        offsets = {item: -math.log(k * recent.share(item)) for item in set(drawn)}
        out: list[TrackedSample] = []
        for click in clicks:
            positive = replace(click, logit_offset=offsets[click.item_id])
            entry = self._open.get(click.key)
            if entry is not None:  # its cart and purchase learn with the same correction
                entry.sample = _bare(positive)
                self._changed(entry.partition, click.key)
            out.append(positive)
            for item in self._negatives_for(click, drawn, k):
                negative = self._new_sample_like(click, item, offsets[item])
                out.append(negative)
        self.counts["negatives"] += len(out) - len(clicks)
        return out

    def _window_full(self, clicks: list[TrackedSample], drawn: list[str]) -> bool:
        """Whether the waiting clicks are enough to draw from, or have waited long enough."""
        config = self.config
        if len(set(drawn)) >= config.negative_window_items:
            return True
        return self._clock.now - min(s.ts for s in clicks) >= config.negative_window_ms

    def _negatives_for(self, click: TrackedSample, drawn: list[str], k: int) -> list[str]:
        """Up to ``k`` draws from ``drawn``, none the clicked item nor one the user has open."""
        chosen = []
        for _ in range(k):
            for _attempt in range(3):
                item = drawn[self._rng.randrange(len(drawn))]
                if item != click.item_id and (click.user_id, item) not in self._open_by_pair:
                    chosen.append(item)
                    break
        return chosen

    def advance(self, now_ms: int) -> list[TrackedSample]:
        """Move event time to ``now_ms`` (never back) and close every window that has passed."""
        self._clock.advance(now_ms)
        closed: list[TrackedSample] = []
        self._close_passed(closed)
        return closed

    def forget_user(self, user_id: str) -> list[int]:
        """Drop the user's open samples (their labels will never be learned); return their keys.

        >>> resolver = LabelResolver(LabelConfig())
        >>> _ = resolver.observe(Event("e1", 1_000, "impression", "u1", "i1"))
        >>> _ = resolver.observe(Event("e2", 1_000, "impression", "u2", "i1"))
        >>> resolver.forget_user("u1"), resolver.open_samples
        ([0], 1)
        """
        keys = [key for key, entry in self._open.items() if entry.sample.user_id == user_id]
        for key in keys:
            self._forget(key)  # its deadline stays queued, and is skipped when due
        self._batch.drop(lambda sample, _: sample.user_id == user_id)
        return keys

    def partition_of(self, key: int) -> int | None:
        """The partition of an open sample or batch click (None for another key)."""
        entry = self._open.get(key)
        if entry is not None:
            return entry.partition
        return self._batch.partition_of(key)

    def partition_keys(self, partition: int) -> list[int]:
        """The keys of the partition's open samples and batch clicks."""
        keys = {key for key, entry in self._open.items() if entry.partition == partition}
        keys.update(s.key for s, p in self._batch if p == partition)
        return sorted(keys)

    def new_key(self) -> int:
        """A key no sample of this resolver has had (for samples taken from another one)."""
        self._next_key += 1
        return self._next_key - 1

    def export_partition(self, partition: int) -> dict[str, Any]:
        """What belongs to ``partition``: its open samples with their deadlines, its event ids
        in the deduplication window, its times (:meth:`EventClock.export_partition`) and its
        clicks waiting for :meth:`close_batch`; plain values.

        The rest stays with this resolver: the negative sampler's generator and
        recent clicks, the counts, the next key, the clock's own time. Its size
        is bounded by the open samples and the window, not by the stream.

        >>> source, target = LabelResolver(), LabelResolver()
        >>> _ = source.observe(Event("e1", 1_000, "impression", "u1", "i1"), partition=3)
        >>> target.import_partition(3, source.export_partition(3), {0: target.new_key()})
        >>> click = target.observe(Event("e2", 1_500, "click", "u1", "i1"), partition=3)
        >>> [(s.key, s.labels()) for s in click.resolved]
        [(0, (1.0, None, None))]
        >>> target.observe(Event("e1", 1_000, "impression", "u1", "i1"), 3).duplicate
        True
        """
        return {
            "open": [_open_to_row(e) for e in self._open.values() if e.partition == partition],
            "seen_ids": self._newest_ids(partition, HANDOVER_IDS),
            "clock": self._clock.export_partition(partition),
            "batch_clicks": [sample_to_row(s) for s, p in self._batch if p == partition],
        }

    def partition_changes(self, partition: int) -> dict[str, Any]:
        """What changed in ``partition`` since the previous call for it, as plain values.

        ``open``: the rows (as :meth:`export_partition` writes them) of samples
        opened or changed; ``gone``: the keys of samples closed or forgotten;
        ``seen_ids``: event ids remembered; ``forgotten_ids``: those that left
        the deduplication window; ``clock`` and ``batch_clicks`` (small) whole.
        Its size is that of what changed: open samples are not looked at.

        The first call for a partition, and the first after :meth:`import_partition`,
        :meth:`drop_partition` or :meth:`load_state_dict`, is :meth:`export_partition`
        with ``"full": True``; the others carry ``"full": False``. From the first call
        on, the partition's changes are kept until the next: call it regularly (or drop
        the partition).

        >>> resolver = LabelResolver()
        >>> _ = resolver.observe(Event("e1", 1_000, "impression", "u1", "i1"), partition=3)
        >>> resolver.partition_changes(3)["full"]
        True
        >>> _ = resolver.observe(Event("e2", 1_500, "click", "u1", "i1"), partition=3)
        >>> changes = resolver.partition_changes(3)
        >>> changes["full"], [row[0] for row in changes["open"]], changes["seen_ids"]
        (False, [0], ['e2'])
        >>> _ = resolver.advance(10_000_000)  # its conversion window closes
        >>> changes = resolver.partition_changes(3)
        >>> changes["open"], changes["gone"]
        ([], [0])
        """
        changes = self._changes.get(partition)
        self._changes[partition] = _Changes()
        if changes is None:
            return {"full": True, **self.export_partition(partition)}
        opened, gone = [], []
        for key in sorted(changes.keys):
            entry = self._open.get(key)
            if entry is not None and entry.partition == partition:
                opened.append(_open_to_row(entry))
            else:
                gone.append(key)
        return {
            "full": False,
            "open": opened,
            "gone": gone,
            "seen_ids": changes.ids,
            "forgotten_ids": changes.forgotten_ids,
            "clock": self._clock.export_partition(partition),
            "batch_clicks": [sample_to_row(s) for s, p in self._batch if p == partition],
        }

    def mark_changed(self, keys: Iterable[int]) -> None:
        """Count these open samples as changed in their partitions' next
        :meth:`partition_changes` (what is kept beside them elsewhere changed)."""
        for key in keys:
            entry = self._open.get(key)
            if entry is not None:
                self._changed(entry.partition, key)

    def open_sample(self, key: int) -> TrackedSample | None:
        """The open sample ``key`` as kept (without labels), None if it is not open."""
        entry = self._open.get(key)
        return None if entry is None else entry.sample

    def _newest_ids(self, partition: int, limit: int) -> list[str]:
        """The newest ``limit`` event ids of ``partition`` remembered, oldest first."""
        newest: list[str] = []
        for event_id in reversed(self._seen_order):
            if self._seen_ids[event_id] == partition:
                newest.append(event_id)
                if len(newest) == limit:
                    break
        return newest[::-1]

    def import_partition(
        self, partition: int, state: dict[str, Any], keys: Mapping[int, int]
    ) -> None:
        """Replace what this resolver holds of ``partition`` with another's
        :meth:`export_partition`, each sample under the key ``keys`` maps its old one to
        (keys number a resolver's own samples: see :meth:`new_key`)."""
        self.drop_partition(partition)
        heap = self._deadlines.setdefault(partition, [])
        for row in state["open"]:
            entry = _open_from_row([keys[row[OPEN_ROW_KEY]], *row[1:]])
            entry.partition = partition
            key = entry.sample.key
            self._open[key] = entry
            self._open_by_pair.setdefault((entry.sample.user_id, entry.sample.item_id), []).append(
                key
            )
            heap.append((entry.deadline, key))
        heapq.heapify(heap)
        for event_id in state["seen_ids"]:
            if event_id not in self._seen_ids:
                self._remember_id(event_id, partition)
        self._clock.import_partition(partition, state["clock"])
        for row in state["batch_clicks"]:
            sample = sample_from_row(row)
            self._batch.add(replace(sample, key=keys[sample.key]), partition)

    def drop_partition(self, partition: int) -> list[int]:
        """Forget ``partition`` (it moved to another worker): its open samples (never to be
        labelled here), batch clicks, event ids and times; return the samples' keys."""
        keys = self.partition_keys(partition)
        for key in keys:
            if key in self._open:
                self._forget(key)
        self._changes.pop(partition, None)  # the next changes of it are whole
        self._deadlines.pop(partition, None)
        self._batch.drop(lambda _, of: of == partition)
        if partition in self._seen_ids.values():
            self._seen_ids = {i: p for i, p in self._seen_ids.items() if p != partition}
            self._seen_order = deque(i for i in self._seen_order if i in self._seen_ids)
        self._clock.drop_partition(partition)
        return keys

    def flush(self) -> list[TrackedSample]:
        """Close every open sample now (end of a finite stream)."""
        closed: list[TrackedSample] = []
        while any(self._deadlines.values()):
            self._close_earliest(closed)
        return closed

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue, as plain values."""
        return {
            "next_key": self._next_key,
            "watermark": self._clock.now,
            "clock": self._clock.state_dict(),
            "open": [_open_to_row(o) for o in self._open.values()],
            "seen_ids": list(self._seen_order),
            "recent_clicks": self._recent_clicks.state_dict(),
            "seen_partitions": [self._seen_ids[event_id] for event_id in self._seen_order],
            "batch_clicks": [sample_to_row(s) for s in self._batch.samples()],
            "batch_partitions": [partition for _, partition in self._batch],
            "rng": _rng_state_to_plain(self._rng.getstate()),
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (same config assumed)."""
        self._next_key = int(state["next_key"])
        self._clock = EventClock(self.config.max_skew_ms, self.config.idle_partition_ms)
        self._clock.load_state_dict(state.get("clock", {"marks": [], "now": state["watermark"]}))
        self._open, self._open_by_pair, self._deadlines = {}, {}, {}
        self._changes = {}  # the next changes of every partition are whole
        for row in state["open"]:
            entry = _open_from_row(row)
            key = entry.sample.key
            self._open[key] = entry
            self._open_by_pair.setdefault((entry.sample.user_id, entry.sample.item_id), []).append(
                key
            )
            self._deadlines.setdefault(entry.partition, []).append((entry.deadline, key))
        for heap in self._deadlines.values():
            heapq.heapify(heap)
        self._seen_order = deque(state["seen_ids"])
        partitions = state.get("seen_partitions", [UNKNOWN_PARTITION] * len(self._seen_order))
        self._seen_ids = dict(zip(self._seen_order, partitions, strict=True))
        for item_id, content in state.get("catalog", {}).items():  # older checkpoints held it
            self.catalog.remember(item_id, ItemContent(*content))
        self._recent_clicks.load_state_dict(state.get("recent_clicks", state.get("pool", [])))
        clicks = [sample_from_row(row) for row in state.get("batch_clicks", [])]
        partitions = state.get("batch_partitions", [UNKNOWN_PARTITION] * len(clicks))
        self._batch = _BatchClicks()
        for sample, partition in zip(clicks, partitions, strict=True):
            self._batch.add(sample, partition)
        self._rng.setstate(_rng_state_from_plain(state["rng"]))
        self.counts.update({k: int(v) for k, v in state["counts"].items()})

    # ------------------------------------------------------------ events

    def _stamped(self, event: Event, partition: int) -> Event:
        """``event`` with its ``ts`` clamped by the event clock (the same event if not)."""
        ts = self._clock.stamp(partition, event.ts)
        if ts == event.ts:
            return event
        self.counts["clamped"] += 1
        return replace(event, ts=ts)

    def _apply_funnel_event(
        self, event: Event, stage: int, partition: int, out: Resolution
    ) -> None:
        pair = (event.user_id, event.item_id)
        entry = self._open_entry_below(pair, stage)
        if entry is not None:
            self._resolve(_update(entry.sample, entry.stage, stage, 1.0), out.resolved)
            if stage == PURCHASED:
                self._forget(entry.sample.key)
            else:
                if entry.stage == SHOWN:
                    entry.deadline = event.ts + self.config.conversion_window_ms
                    heap = self._deadlines.setdefault(entry.partition, [])
                    heapq.heappush(heap, (entry.deadline, entry.sample.key))
                entry.stage = stage
                self._changed(entry.partition, entry.sample.key)
        elif pair in self._open_by_pair:
            self.counts["repeats"] += 1
        else:
            labels = tuple(1.0 if s <= stage else None for s in (CLICKED, CARTED, PURCHASED))
            sample = self._new_sample(event, labels)
            if self.config.impressions:
                out.new.append(sample)
            else:
                self._batch.add(sample, partition)  # with its negatives at close_batch
            if stage < PURCHASED:
                deadline = event.ts + self.config.conversion_window_ms
                self._keep_open(sample, stage, deadline, partition, out)

    def _open_entry_below(self, pair: tuple[str, str], stage: int) -> _Open | None:
        """The open sample of the pair furthest along the funnel but before ``stage``."""
        best: _Open | None = None
        for key in self._open_by_pair.get(pair, ()):
            entry = self._open[key]
            if entry.stage < stage and (best is None or entry.stage >= best.stage):
                best = entry
        return best

    def _new_sample(self, event: Event, labels: tuple[float | None, ...]) -> TrackedSample:
        """A sample of ``event`` with ``labels``."""
        # the event's own content was just remembered: as the object kept for the item
        content = self.catalog.get(event.item_id) or event.item or ItemContent()
        sample = TrackedSample.of_event(
            event, content, click=labels[0], cart=labels[1], purchase=labels[2], key=self._next_key
        )
        self._next_key += 1
        return sample

    def _new_sample_like(self, click: TrackedSample, item_id: str, offset: float) -> TrackedSample:
        """A negative: ``item_id`` in the place of ``click``'s item, for its user and time."""
        content = self.catalog.get(item_id) or ItemContent()
        sample = replace(
            click,
            item_id=item_id,
            category=content.category,
            brand=content.brand,
            price=content.price,
            click=0.0,
            cart=0.0,
            purchase=0.0,
            logit_offset=offset,
            key=self._next_key,
        )
        self._next_key += 1
        return sample

    # ------------------------------------------------------------ windows

    def _keep_open(
        self, sample: TrackedSample, stage: int, deadline: int, partition: int, out: Resolution
    ) -> None:
        key = sample.key
        self._open[key] = _Open(_bare(sample), stage, deadline, partition)
        self._open_by_pair.setdefault((sample.user_id, sample.item_id), []).append(key)
        heapq.heappush(self._deadlines.setdefault(partition, []), (deadline, key))
        self._changed(partition, key)
        while len(self._open) > self.config.max_pending:
            self.counts["forced_closes"] += 1
            self._close_earliest(out.resolved)

    def _close_passed(self, closed: list[TrackedSample]) -> None:
        """Close the windows that have passed, each partition's on its own time."""
        for partition, heap in self._deadlines.items():
            if heap and heap[0][0] < (until := self._clock.closing_time(partition)):
                while heap and heap[0][0] < until:
                    self._close_first(heap, closed)

    def _close_earliest(self, closed: list[TrackedSample]) -> None:
        """Close the window with the earliest deadline of any partition."""
        heap = min((h for h in self._deadlines.values() if h), key=lambda h: h[0])
        self._close_first(heap, closed)

    def _close_first(self, heap: list[tuple[int, int]], closed: list[TrackedSample]) -> None:
        deadline, key = heapq.heappop(heap)
        entry = self._open.get(key)
        if entry is None or entry.deadline != deadline:
            return  # stale heap entry: already closed, or its deadline moved
        self._resolve(_update(entry.sample, entry.stage, PURCHASED, 0.0), closed)
        self._forget(key)

    def _resolve(self, update: TrackedSample, out: list[TrackedSample]) -> None:
        """Emit a label update, or write it into its click if that still waits for
        :meth:`close_batch` (its positive is then made with the labels it already has)."""
        if not self._batch.label(update):
            out.append(update)

    def _forget(self, key: int) -> None:
        entry = self._open.pop(key)
        pair = (entry.sample.user_id, entry.sample.item_id)
        keys = self._open_by_pair[pair]
        keys.remove(key)
        if not keys:
            del self._open_by_pair[pair]
        self._changed(entry.partition, key)

    def _changed(self, partition: int, key: int) -> None:
        """Note that the open sample ``key`` of ``partition`` opened, changed or went."""
        changes = self._changes.get(partition)
        if changes is not None:
            changes.keys.add(key)

    # ------------------------------------------------------------ memory

    def _is_duplicate(self, event_id: str, partition: int) -> bool:
        if event_id in self._seen_ids:
            return True
        self._remember_id(event_id, partition)
        return False

    def _remember_id(self, event_id: str, partition: int) -> None:
        self._seen_ids[event_id] = partition
        self._seen_order.append(event_id)
        changes = self._changes.get(partition)
        if changes is not None:
            changes.ids.append(event_id)
        if len(self._seen_order) > self.config.dedupe_events:
            oldest = self._seen_order.popleft()
            changes = self._changes.get(self._seen_ids.pop(oldest))
            if changes is not None:
                changes.forgotten_ids.append(oldest)


class _BatchClicks:
    """Clicks waiting for :meth:`LabelResolver.close_batch`, each with its partition, found
    by sample key (a cart or purchase resolved before the batch closes labels its click).

    >>> sample = TrackedSample("u1", "i1", ts=1, click=1.0, key=7)
    >>> clicks = _BatchClicks()
    >>> clicks.add(sample, partition=2)
    >>> clicks.label(TrackedSample("u1", "i1", ts=1, cart=1.0, key=7)), clicks.partition_of(7)
    (True, 2)
    >>> [(s.click, s.cart) for s in clicks.samples()]
    [(1.0, 1.0)]
    >>> clicks.drop(lambda sample, partition: partition == 2)
    >>> len(clicks), clicks.label(TrackedSample("u1", "i1", ts=1, cart=1.0, key=7))
    (0, False)
    """

    def __init__(self) -> None:
        self._samples: list[TrackedSample] = []
        self._partitions: list[int] = []
        self._index: dict[int, int] = {}  # key -> place

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[tuple[TrackedSample, int]]:
        return zip(self._samples, self._partitions, strict=True)

    def samples(self) -> list[TrackedSample]:
        """The clicks, in the order they came."""
        return list(self._samples)

    def add(self, sample: TrackedSample, partition: int) -> None:
        """A click of ``partition`` waits for the batch to close."""
        self._index[sample.key] = len(self._samples)
        self._samples.append(sample)
        self._partitions.append(partition)

    def drop(self, which: Callable[[TrackedSample, int], bool]) -> None:
        """Forget the clicks for which ``which(sample, partition)`` is true."""
        kept = [(s, p) for s, p in self if not which(s, p)]
        self._samples = [s for s, _ in kept]
        self._partitions = [p for _, p in kept]
        self._index = {s.key: n for n, s in enumerate(self._samples)}

    def partition_of(self, key: int) -> int | None:
        """The partition of the click ``key`` (None if it does not wait here)."""
        n = self._index.get(key)
        return None if n is None else self._partitions[n]

    def label(self, update: TrackedSample) -> bool:
        """Write ``update``'s known labels into its click; whether it waits here."""
        n = self._index.get(update.key)
        if n is None:
            return False
        click = self._samples[n]
        pairs = zip(update.labels(), click.labels(), strict=True)
        self._samples[n] = labelled(click, *(new if new is not None else old for new, old in pairs))
        return True


def _bare(sample: TrackedSample) -> TrackedSample:
    """The sample's identity and features without labels (what open samples keep).

    A sample without labels (an impression's) is its own bare copy: samples
    are not changed once made.
    """
    if (sample.click, sample.cart, sample.purchase) == _NO_LABELS:
        return sample
    return labelled(sample, *_NO_LABELS)


def _update(sample: TrackedSample, stage: int, upto: int, value: float) -> TrackedSample:
    """An update of ``sample`` setting the labels after ``stage`` up to ``upto`` to ``value``."""
    return labelled(
        sample,
        value if stage < CLICKED <= upto else None,
        value if stage < CARTED <= upto else None,
        value if stage < PURCHASED <= upto else None,
    )


def labelled(
    sample: TrackedSample, click: float | None, cart: float | None, purchase: float | None
) -> TrackedSample:
    """A copy of ``sample`` with these labels (``None``: unknown).

    >>> labelled(TrackedSample("u1", "i1", ts=5, key=3), 1.0, None, None).labels()
    (1.0, None, None)
    """
    return TrackedSample(
        user_id=sample.user_id,
        item_id=sample.item_id,
        ts=sample.ts,
        category=sample.category,
        brand=sample.brand,
        price=sample.price,
        device=sample.device,
        click=click,
        cart=cart,
        purchase=purchase,
        weight=sample.weight,
        key=sample.key,
    )


def _open_to_row(entry: _Open) -> list[Any]:
    s = entry.sample
    return [
        s.key,
        s.user_id,
        s.item_id,
        s.ts,
        s.category,
        s.brand,
        s.price,
        s.device,
        s.weight,
        entry.stage,
        entry.deadline,
        entry.partition,
        s.logit_offset,
    ]


def sample_to_row(sample: TrackedSample) -> list[Any]:
    """A sample as plain values, for checkpoints (:func:`sample_from_row` reads it back).

    >>> sample_from_row(sample_to_row(TrackedSample("u", "i", 5, click=1.0, key=3)))
    TrackedSample(user_id='u', item_id='i', ts=5, category=None, brand=None, price=None, \
device=None, click=1.0, cart=None, purchase=None, weight=1.0, logit_offset=0.0, value=None, \
key=3)
    """
    return [getattr(sample, name) for name in _SAMPLE_FIELDS]


def sample_from_row(row: list[Any]) -> TrackedSample:
    """The sample :func:`sample_to_row` wrote (rows of older checkpoints have no ``value``)."""
    names = _SAMPLE_FIELDS if len(row) == len(_SAMPLE_FIELDS) else _SAMPLE_FIELDS_BEFORE_VALUE
    return TrackedSample(**dict(zip(names, row, strict=True)))


def open_row_sample(row: list[Any]) -> TrackedSample:
    """The sample (without labels) of an open sample's row (:meth:`LabelResolver.export_partition`).

    >>> resolver = LabelResolver()
    >>> _ = resolver.observe(Event("e1", 1_000, "impression", "u1", "i1"), partition=3)
    >>> open_row_sample(resolver.export_partition(3)["open"][0]) == resolver.open_sample(0)
    True
    """
    return _open_from_row(row).sample


def _open_from_row(row: list[Any]) -> _Open:
    key, user, item, ts, category, brand, price, device, weight, stage, deadline = row[:11]
    partition = row[11] if len(row) > 11 else UNKNOWN_PARTITION  # older checkpoints
    offset = row[12] if len(row) > 12 else 0.0
    sample = TrackedSample(
        user_id=user,
        item_id=item,
        ts=int(ts),
        category=category,
        brand=brand,
        price=price,
        device=device,
        weight=float(weight),
        logit_offset=float(offset),
        key=int(key),
    )
    return _Open(sample, int(stage), int(deadline), int(partition))


def _rng_state_to_plain(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_plain(state: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
