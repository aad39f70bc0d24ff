"""The lists the product serves, judged: top-K quality in ``recstream bench quality``.

For each click, cart and purchase in the second half of the replay (the
events from index ``events // 2`` on, as the bench's AUC), the list the user
would have been served just before it is built, and judged by the event:

- ``hit_rate_at_10``: the share of events whose item is in the list;
- ``ndcg_at_10``: ``1 / log2(rank + 2)`` if the item is at ``rank`` (0 first),
  else 0 (one relevant item, so the ideal DCG is 1);
- ``expected_at_10`` (the simulator only): the expected number of the
  event's task (clicks, carts or purchases) the list brings, the sum over its
  items of the shop's true entire-space probability (``p_click``,
  ``p_click * p_cart|click``, ``p_click * p_cart|click * p_purchase|cart``)
  for that user, on the event's device, as the shop was at that time. It
  judges a list by what it would earn, not by agreement with what the
  simulator happened to show (its slates lean on popular items).

The lists (:data:`LISTS`), K = :data:`K`:

``mtl``
    The worker's list: the candidate pool (:class:`~streams.candidates.CandidatePool`,
    the worker's configuration, fed the same catalog records and events a
    worker's is; its rated source, :mod:`streams.rated`, needs the model, so
    it is scanned as the lists are served, and the items it adds are judged
    by the shop's truth as of the step) and the ranker (:class:`~streams.ranking.Ranker`, the
    worker's configuration: top 20 with 2 places kept for cold items), the
    multi-task model as it was before the micro-batch holding the event was
    learned. The first 10 of the served 20 (they come best first) are
    judged: what a user sees first; a cold item kept in one of the last
    places counts only if it ranks in the first 10 on its score.
``oracle`` (the simulator only)
    Per task, the K items with the highest true probability of that task
    among every item announced so far (the whole catalog, a ceiling): its
    click list for clicks, its purchase list for purchases.
``popular_now``
    The K items with the highest recency-decayed popularity (every user's
    clicks, carts and purchases weighted 1, 3, 5, as the worker's candidate
    pool weighs them).
``recently_interacted``
    The user's own items by their recency-decayed weight, then the most
    popular items of the user's :data:`RECENT_CATEGORIES` categories of
    highest recency-decayed weight, then ``popular_now``.
``category_popular``
    The most popular items of the user's :data:`RECENT_CATEGORIES` most
    recent categories (their items together, by popularity), then ``popular_now``.

Decay: half-life :data:`HALF_LIFE_S` of event time by source: the simulator
1 h (200,000 events span 3.4 h with impressions, 32 h without), REES46
30 min (the bundled sample spans 2 h 50 min; sessions last minutes), Taobao
1 day (9 days of a few users' daily visits), a recording 1 h. A user keeps
their :data:`USER_ITEMS` latest items.

Where the ``mtl`` list loses, ``candidates`` tells whether its candidate
pool or its ranking is to blame: per task, ``recall`` (the share of events
whose item was among the user's candidates; ``mtl`` cannot hit more) and on
the simulator ``best_expected_at_10`` (the expected count of the task that
the 10 truly best of the user's candidates bring: ``mtl`` cannot earn
more; the ``oracle`` picks from the whole catalog) and
``objective_expected_at_10`` (what the 10 candidates best by the ranker's
objective under the true probabilities bring: one list for every task, as
``mtl``'s, ranked perfectly).

``calibration`` (the simulator only) sets the model's predictions for the
10 items of each judged ``mtl`` list against the shop's truth for the same
items: per task, the mean predicted and true counts per list and their
ratio. The ranker adds the tasks' probabilities up by its weights, so
predictions too high for one task on the ranked candidates (items the model
learned little about, unlike the impressions it is calibrated on) tilt
every list towards that task.

Every list is built from the same history: the catalog records and events
before the micro-batch holding the event (the worker ranks after a batch
with what it learned from it), at the time of the last event before it. No
list leaves anything out that the worker would not: its ranker excludes
nothing (bought items stay), so none of the lists does.

Evaluation events: every click, cart and purchase of the second half, or a
random sample of about :data:`MAX_EVENTS_PER_TASK` per task where there are
more (each event of a task kept with probability ``MAX_EVENTS_PER_TASK /
first half's count of that task``, so the sample spreads over the whole
second half). Every list is judged on the same events. Standard errors
(``*_se``) are bootstrap standard errors of the mean over
:data:`BOOTSTRAP_RESAMPLES` resamples of *users* (a user's events move
together: they are not independent), the same resamples for every list, so
``comparisons`` (``mtl`` minus each list, per event) have paired errors.

Example
-------
>>> hit_and_ndcg(["a", "b", "c"], "c")
(1.0, 0.5)
>>> hit_and_ndcg(["a", "b", "c"], "z")
(0.0, 0.0)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from online_models.base import TASKS, CandidateBlock, Learner
from online_models.catalog import Catalog
from producers.contract import CatalogItem, Event
from streams.candidates import CandidateConfig, CandidatePool
from streams.ranking import Ranker, RankingConfig, order_values
from streams.rated import RatedItems

K = 10
"""List length judged."""
SIMPLE_LISTS: tuple[str, ...] = ("popular_now", "recently_interacted", "category_popular")
LISTS: tuple[str, ...] = ("mtl", "oracle", *SIMPLE_LISTS)
MAX_EVENTS_PER_TASK = 5_000
"""About this many evaluation events per task at most (a random sample, see the module)."""
BOOTSTRAP_RESAMPLES = 200
HALF_LIFE_S: dict[str, float] = {"sim": 3_600.0, "rees46": 1_800.0, "taobao": 86_400.0}
"""Half-life of the simple lists' decay, seconds of event time, by source (else 1 h)."""
DEFAULT_HALF_LIFE_S = 3_600.0
RECENT_CATEGORIES = 3
USER_ITEMS = 50
WEIGHTS = {"click": 1.0, "cart": 3.0, "purchase": 5.0}
"""Weight of an event in popularity and a user's history (the worker's candidate pool's)."""
METRICS: tuple[str, ...] = ("hit_rate_at_10", "ndcg_at_10", "expected_at_10")


def hit_and_ndcg(ranked: Sequence[str], item: str, k: int = K) -> tuple[float, float]:
    """Whether ``item`` is in the first ``k`` of ``ranked``, and its NDCG (``1/log2(rank+2)``)."""
    for rank, candidate in enumerate(ranked[:k]):
        if candidate == item:
            return 1.0, 1.0 / math.log2(rank + 2)
    return 0.0, 0.0


def bootstrap_se(
    values: np.ndarray, users: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Bootstrap standard errors of the column means of ``values`` (events x columns).

    Users are resampled with replacement (``users`` gives each event's user
    code); a resample's mean is its events' sum over their count. NaN where
    there are fewer than two users.

    >>> values = np.array([[1.0], [0.0], [1.0], [0.0]])
    >>> float(bootstrap_se(values, np.array([0, 1, 2, 3]))[0]) > 0
    True
    """
    values = np.asarray(values, dtype=np.float64)
    means = resampled_means(values, users, resamples, seed)
    if means is None:
        return np.full(1 if values.ndim == 1 else values.shape[1], np.nan)
    return means.std(axis=0, ddof=1)


def resampled_means(
    values: np.ndarray, users: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> np.ndarray | None:
    """The column means of ``values`` (events x columns) in each of ``resamples`` resamples
    of users (``resamples x columns``), as :func:`bootstrap_se` draws them; ``None`` with
    fewer than two users.

    >>> resampled_means(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0, 1]), 5).shape
    (5, 2)
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    _, codes = np.unique(users, return_inverse=True)
    n_users = int(codes.max()) + 1 if len(codes) else 0
    if n_users < 2:
        return None
    sums = np.zeros((n_users, values.shape[1]))
    np.add.at(sums, codes, values)
    counts = np.bincount(codes, minlength=n_users).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, n_users, (resamples, n_users))
    picked = np.bincount(
        (draws + n_users * np.arange(resamples)[:, None]).ravel(), minlength=resamples * n_users
    ).reshape(resamples, n_users)
    return (picked @ sums) / (picked @ counts)[:, None]


# ------------------------------------------------------------------ simple lists


@dataclass
class _User:
    items: OrderedDict[str, float] = field(default_factory=OrderedDict)  # latest last
    categories: OrderedDict[str, float] = field(default_factory=OrderedDict)  # latest last


class History:
    """Recency-decayed popularity and per-user history: the simple lists.

    A weight ``w`` at event time ``t`` counts ``w * 2 ** ((t - now) / half_life)``
    at ``now``; scores are kept growth-scaled (``w * 2 ** ((t - t0) / half_life)``),
    so ranking needs no update per step.

    >>> history = History(half_life_ms=1_000)
    >>> history.observe_catalog(CatalogItem("c", 0, category="x"))
    >>> history.observe([Event("1", 0, "click", "u1", "a"), Event("2", 0, "purchase", "u2", "b"),
    ...                  Event("3", 3_000, "click", "u1", "c")])
    >>> history.popular_now(2), history.recently_interacted("u1", 2)  # b's 5 decayed to 5/8
    (['c', 'b'], ['c', 'a'])
    >>> history.category_popular("u1", 3), history.category_popular("nobody", 1)
    (['c', 'b', 'a'], ['c'])
    """

    def __init__(self, half_life_ms: float) -> None:
        self.growth = math.log(2.0) / half_life_ms
        self.t0: int | None = None
        self.now: int | None = None
        self._slot: dict[str, int] = {}
        self._items: list[str] = []
        self._scores = np.zeros(1024)
        self._codes = np.full(1024, -1, dtype=np.int64)
        self._code: dict[str, int] = {}
        self._category: dict[str, str | None] = {}
        self._users: dict[str, _User] = {}
        self._cache: dict[Any, list[str]] = {}

    def observe_catalog(self, item: CatalogItem) -> None:
        """An item's category, from its catalog record."""
        self._category[item.item_id] = item.category
        slot = self._slot.get(item.item_id)
        if slot is not None:
            self._codes[slot] = self._code_of(item.category)

    def observe(self, events: Sequence[Event]) -> None:
        """Clicks, carts and purchases raise popularity and their user's history."""
        self._cache.clear()
        for event in events:
            weight = WEIGHTS.get(event.type)
            if weight is None:
                continue
            if self.t0 is None:
                self.t0 = event.ts
            self.now = event.ts if self.now is None else max(self.now, event.ts)
            exponent = (event.ts - self.t0) * self.growth
            if exponent > 600:  # keep exp() finite: rebase every score
                self._rebase(event.ts)
                exponent = 0.0
            boost = weight * math.exp(exponent)
            category = self._category.get(event.item_id)
            if category is None and event.item is not None:
                category = self._category[event.item_id] = event.item.category
            slot = self._slot.get(event.item_id)
            if slot is None:
                slot = self._append(event.item_id, category)
            self._scores[slot] += boost
            user = self._users.get(event.user_id)
            if user is None:
                user = self._users[event.user_id] = _User()
            user.items[event.item_id] = user.items.pop(event.item_id, 0.0) + boost
            if len(user.items) > USER_ITEMS:
                user.items.popitem(last=False)
            if category:
                user.categories[category] = user.categories.pop(category, 0.0) + boost
                if len(user.categories) > USER_ITEMS:
                    user.categories.popitem(last=False)

    def popular_now(self, k: int = K) -> list[str]:
        """The ``k`` most popular items (ties: the first seen first)."""
        key = ("popular", k)
        if key not in self._cache:
            used = len(self._items)
            order = np.argsort(-self._scores[:used], kind="stable")[:k]
            self._cache[key] = [self._items[slot] for slot in order.tolist()]
        return self._cache[key]

    def recently_interacted(self, user_id: str, k: int = K) -> list[str]:
        """The user's items by decayed weight, then their heaviest categories' best, then
        ``popular_now``."""
        user = self._users.get(user_id)
        if user is None:
            return self.popular_now(k)
        own = sorted(user.items, key=user.items.__getitem__, reverse=True)[:k]
        categories = sorted(user.categories, key=user.categories.__getitem__, reverse=True)
        return _fill(k, own, self._best_of(categories[:RECENT_CATEGORIES], k), self.popular_now(k))

    def category_popular(self, user_id: str, k: int = K) -> list[str]:
        """The best items of the user's most recent categories, then ``popular_now``."""
        user = self._users.get(user_id)
        recent = list(reversed(user.categories))[:RECENT_CATEGORIES] if user else []
        return _fill(k, self._best_of(recent, k), self.popular_now(k))

    def _best_of(self, categories: Sequence[str], k: int) -> list[str]:
        """The ``k`` most popular items of these categories together."""
        codes = [self._code[c] for c in categories if c in self._code]
        if not codes:
            return []
        key = ("categories", tuple(sorted(codes)), k)
        if key not in self._cache:
            used = len(self._items)
            slots = np.flatnonzero(np.isin(self._codes[:used], codes))
            order = slots[np.argsort(-self._scores[slots], kind="stable")[:k]]
            self._cache[key] = [self._items[slot] for slot in order.tolist()]
        return self._cache[key]

    def _append(self, item_id: str, category: str | None) -> int:
        slot = len(self._items)
        if slot == len(self._scores):
            self._scores = np.concatenate([self._scores, np.zeros(slot)])
            self._codes = np.concatenate([self._codes, np.full(slot, -1, dtype=np.int64)])
        self._slot[item_id] = slot
        self._items.append(item_id)
        self._codes[slot] = self._code_of(category)
        return slot

    def _code_of(self, category: str | None) -> int:
        if not category:
            return -1
        return self._code.setdefault(category, len(self._code))

    def _rebase(self, ts: int) -> None:
        scale = math.exp(-(ts - self.t0) * self.growth)
        self._scores *= scale
        for user in self._users.values():
            for store in (user.items, user.categories):
                for key in store:
                    store[key] *= scale
        self.t0 = ts


def _fill(k: int, *sources: Sequence[str]) -> list[str]:
    """The first ``k`` distinct items of the sources, in order."""
    out: dict[str, None] = {}
    for source in sources:
        for item in source:
            out.setdefault(item)
            if len(out) == k:
                return list(out)
    return list(out)


def _true_rows(shop: Any, user_id: str, device: str | None, items: list[str]) -> np.ndarray:
    """``(len(items), 3)`` entire-space true probabilities of the user's items on ``device``."""
    if not items:
        return np.zeros((0, 3))
    devices = None if device is None else [device] * len(items)
    return np.cumprod(shop.truth_many([user_id] * len(items), items, devices), axis=1)


def with_items(
    block: CandidateBlock, spans: list[tuple[int, int]], items: list[str], catalog: Catalog
) -> tuple[CandidateBlock, list[tuple[int, int]], list[list[str]]]:
    """``block`` with ``items`` (the pool's rated source) added to each user's candidates that
    lack them; each span of ``spans`` (an evaluation event's user's pairs) in the new block; the
    items each span gained, in pair order (after the user's own pairs: the worker's block puts
    them among the shared items, an order that only breaks ties)."""
    if not items:
        return block, spans, [[] for _ in spans]
    index = {item: n for n, item in enumerate(block.item_ids)}
    added_items = [item for item in items if item not in index]
    contents = [catalog.get(item) for item in added_items]
    index.update({item: len(block.item_ids) + n for n, item in enumerate(added_items)})
    rows = [index[item] for item in items]
    bounds = np.searchsorted(block.pair_user, np.arange(len(block.user_ids) + 1))
    pairs, gained = [], []
    for user in range(len(block.user_ids)):
        own = block.pair_item[bounds[user] : bounds[user + 1]]
        held = set(own.tolist())
        new = [r for r in rows if r not in held]
        pairs.append(np.concatenate([own, np.array(new, dtype=np.int64)]))
        gained.append(new)
    sizes = [len(p) for p in pairs]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    extended = CandidateBlock(
        user_ids=block.user_ids,
        times=block.times,
        item_ids=[*block.item_ids, *added_items],
        categories=[*block.categories, *(c.category for c in contents)],
        brands=[*block.brands, *(c.brand for c in contents)],
        prices=[*block.prices, *(c.price for c in contents)],
        pair_user=np.repeat(np.arange(len(block.user_ids)), sizes),
        pair_item=np.concatenate(pairs) if pairs else block.pair_item,
    )
    item_ids = extended.item_ids
    new_spans, extra = [], []
    for begin, end in spans:
        if begin == end:
            new_spans.append((0, 0))
            extra.append([])
            continue
        user = int(block.pair_user[begin])
        new_spans.append((int(starts[user]), int(starts[user + 1])))
        extra.append([item_ids[r] for r in gained[user]])
    return extended, new_spans, extra


# ------------------------------------------------------------------ the oracle


class _Oracle:
    """Per user, device and state of the shop: the items of highest true probability.

    Kept per ``(user, device, drifts applied)``: the union of the per-task top
    K among the items covered so far; items announced later are scored when
    the user is asked about again (the truth of an item changes only at a drift).
    """

    def __init__(self, shop: Any, k: int = K) -> None:
        self.shop = shop
        self.k = k
        self.items: list[str] = []
        self._known: set[str] = set()
        self._best: dict[tuple[str, str | None, int], tuple[int, np.ndarray, np.ndarray]] = {}

    def announce(self, item_id: str) -> None:
        if item_id not in self._known:
            self._known.add(item_id)
            self.items.append(item_id)

    def lists(self, user_id: str, device: str | None) -> list[tuple[list[str], np.ndarray]]:
        """Per task: the best K items and their true entire-space probabilities (K x 3)."""
        key = (user_id, device, len(self.shop.drift_points))
        covered, slots, truth = self._best.get(key, (0, np.zeros(0, np.int64), np.zeros((0, 3))))
        n = len(self.items)
        if covered < n:
            fresh = self.items[covered:n]
            devices = None if device is None else [device] * len(fresh)
            rows = np.cumprod(self.shop.truth_many([user_id] * len(fresh), fresh, devices), axis=1)
            slots = np.concatenate([slots, np.arange(covered, n)])
            truth = np.vstack([truth, rows])
            keep = np.unique(
                np.concatenate(
                    [np.argsort(-truth[:, t], kind="stable")[: self.k] for t in range(3)]
                )
            )
            slots, truth = slots[keep], truth[keep]
            self._best[key] = (n, slots, truth)
        out = []
        for task in range(len(TASKS)):
            order = np.argsort(-truth[:, task], kind="stable")[: self.k]
            out.append(([self.items[s] for s in slots[order].tolist()], truth[order]))
        return out


# ------------------------------------------------------------------ the evaluation


@dataclass
class _Served:
    """What the mtl hook needs for one step: the block and, per evaluation event, its
    user's pairs in the block and their truth (the simulator)."""

    block: CandidateBlock
    events: list[int]  # evaluation event numbers
    pairs: list[tuple[int, int]]  # (start, stop) of the event's user's pairs in the block
    truth: list[np.ndarray | None]
    now: int
    devices: list[str | None]  # per evaluation event
    shop: Any  # the simulated shop's truth as of the step (a snapshot), or None


class TopKEvaluation:
    """Builds every list before each micro-batch and judges them by its events.

    The bench calls :meth:`announce` with catalog records as they come,
    :meth:`close_step` when a micro-batch is complete (before anything of it
    is observed here), and :meth:`serve` (the mtl run's hook) before the
    model learns each micro-batch.

    ``from_event``: the first event index judged; ``shop``: the simulated
    shop (its truth) or ``None``; ``catalog_items``: the catalog's bound (the
    label configuration's, as the worker's).
    """

    def __init__(
        self,
        from_event: int,
        half_life_s: float,
        shop: Any = None,
        seed: int = 0,
        catalog_items: int = 1_000_000,
        max_events: int = MAX_EVENTS_PER_TASK,
    ) -> None:
        self.from_event = from_event
        self.half_life_s = half_life_s
        self.seed = seed
        self.max_events = max_events
        config = CandidateConfig()
        self.pool = CandidatePool(config, Catalog(catalog_items))
        self.ranker = Ranker(RankingConfig())
        # the pool's rated source needs the model: kept here in serving order, as the worker's
        self.rated = RatedItems(config.rated, config.refresh_every)
        self._rated_catalog = Catalog(catalog_items)
        self._funnel_events = 0  # of the last step served
        self._prepared = -1  # the last step position served_for prepared
        self._snapshots: dict[int, Any] = {}  # the shop as of each number of drifts applied
        self.history = History(half_life_s * 1000)
        self.oracle = _Oracle(shop) if shop is not None else None
        self.shop = shop
        self._pending: list[CatalogItem] = []
        self._first_half = dict.fromkeys(TASKS, 0)
        self._rates: dict[str, float] | None = None
        self._rng = np.random.default_rng([seed, 17])
        self._served: dict[int, _Served] = {}
        self.tasks: list[int] = []  # per evaluation event: its task's index, user and item
        self.users: list[str] = []
        self.items: list[str] = []
        self.values: dict[str, list[tuple[float, float, float]]] = {
            name: [] for name in LISTS if name != "mtl"
        }
        self.mtl: dict[int, tuple[float, float, float]] = {}
        self.candidates: dict[int, tuple[float, float, float]] = {}  # recall, best, objective
        self.calibration: dict[int, np.ndarray] = {}  # the served 10's predicted, true sums
        self.seconds = 0.0
        self.done = False

    def announce(self, item: CatalogItem) -> None:
        """A catalog record, observed with the next micro-batch's end."""
        if not self.done:
            self._pending.append(item)

    def close_step(self, position: int, events: Sequence[Event]) -> None:
        """Micro-batch complete (``position``: its last event index): judge its events with
        lists built before it, then observe it."""
        start = time.perf_counter()
        first = position - len(events) + 1
        judged = []
        for index, event in enumerate(events, first):
            if event.type not in WEIGHTS:
                continue
            if index < self.from_event:
                self._first_half[event.type] += 1
                continue
            if self._rates is None:
                self._rates = {
                    task: min(1.0, self.max_events / max(count, 1))
                    for task, count in self._first_half.items()
                }
            if self._rng.random() < self._rates[event.type]:
                judged.append(event)
        if judged:
            self._judge(position, judged, events[0].ts)
        for item in self._pending:
            self.pool.observe_catalog(item)
            self.history.observe_catalog(item)
            if self.oracle is not None:
                self.oracle.announce(item.item_id)
        self._pending.clear()
        self.pool.observe(events)
        self.history.observe(events)
        self.seconds += time.perf_counter() - start

    def _judge(self, position: int, judged: list[Event], first_ts: int) -> None:
        now = self.history.now if self.history.now is not None else first_ts
        users = list(dict.fromkeys(event.user_id for event in judged))
        block = self.pool.block(dict.fromkeys(users, now))
        bounds = np.searchsorted(block.pair_user, np.arange(len(block.user_ids) + 1))
        place = {user: n for n, user in enumerate(block.user_ids)}
        numbers, pairs, truths, devices = [], [], [], []
        for event in judged:
            number = len(self.tasks)
            task = TASKS.index(event.type)
            self.tasks.append(task)
            self.users.append(event.user_id)
            self.items.append(event.item_id)
            numbers.append(number)
            n = place.get(event.user_id)
            span = (0, 0) if n is None else (int(bounds[n]), int(bounds[n + 1]))
            pairs.append(span)
            lists = {
                "popular_now": self.history.popular_now(),
                "recently_interacted": self.history.recently_interacted(event.user_id),
                "category_popular": self.history.category_popular(event.user_id),
            }
            device = (event.context or {}).get("device")
            devices.append(device)
            oracle = self.oracle.lists(event.user_id, device) if self.oracle else None
            if oracle is not None:
                lists["oracle"], oracle_expected = oracle[task][0], oracle[task][1][:, task].sum()
            if self.shop is not None:
                block_items = [block.item_ids[i] for i in block.pair_item[span[0] : span[1]]]
                simple = [item for name in SIMPLE_LISTS for item in lists[name]]
                truth = _true_rows(self.shop, event.user_id, device, [*block_items, *simple])
                truths.append(truth[: len(block_items)])
                of = dict(zip(simple, truth[len(block_items) :].tolist(), strict=True))
            else:
                truths.append(None)
            for name, items in lists.items():
                hit, ndcg = hit_and_ndcg(items, event.item_id)
                if name == "oracle":
                    expected = float(oracle_expected)
                elif self.shop is not None:
                    expected = sum(of[item][task] for item in items)
                else:
                    expected = math.nan
                self.values[name].append((hit, ndcg, expected))
        self._served[position] = _Served(
            block, numbers, pairs, truths, now, devices, self._snapshot()
        )

    def _snapshot(self) -> Any:
        """The shop's truth as it is now (its arrays copied once per state: a state changes
        only at a drift)."""
        if self.shop is None:
            return None
        drifts = len(self.shop.drift_points)
        self._snapshots[drifts] = self.shop.snapshot(self._snapshots.get(drifts))
        return self._snapshots[drifts]

    def finish(self) -> None:
        """The stream is built: later catalog records are not for any list."""
        self.done = True
        self._pending.clear()

    def serve(self, model: Learner, step: Any) -> None:
        """The mtl hook (before ``step`` is learned): rank the step's users' candidates."""
        served = self.served_for(model, step)
        if served is None:
            return
        start = time.perf_counter()
        block = served.block
        records = self.ranker.rank_block(model, block, served.now)
        values = order_values(block, None)  # a perfect ranking knows no predicted value
        served_lists = {r["user_id"]: r["items"][:K] for r in records}
        for number, (begin, end), truth in zip(
            served.events, served.pairs, served.truth, strict=True
        ):
            user, task = self.users[number], self.tasks[number]
            entries = served_lists.get(user, [])
            items = [entry["item_id"] for entry in entries]
            hit, ndcg = hit_and_ndcg(items, self.items[number])
            row = {block.item_ids[i]: n for n, i in enumerate(block.pair_item[begin:end])}
            expected = best = objective = math.nan
            if truth is not None:
                brought = truth[[row[i] for i in items]].sum(axis=0)  # per task, the list's
                expected = float(brought[task])
                best = float(np.sort(truth[:, task])[::-1][:K].sum())
                joint = self.ranker.joint(truth, block, values[begin:end])
                ranked = np.argsort(-joint, kind="stable")[:K]
                objective = float(truth[ranked, task].sum())
                if entries:
                    predicted = [[e["p_click"], e["p_cart"], e["p_purchase"]] for e in entries]
                    self.calibration[number] = np.r_[np.sum(predicted, axis=0), brought]
            self.mtl[number] = (hit, ndcg, expected)
            self.candidates[number] = (float(self.items[number] in row), best, objective)
        self.seconds += time.perf_counter() - start

    def served_for(self, model: Learner, step: Any) -> _Served | None:
        """What the lists of ``step`` are ranked from: the candidate block built before it, with
        the items the model rated best (the pool's rated source, :mod:`streams.rated`, which
        needs the model: it is scanned here, in serving order, as the worker's is); ``None`` if
        no event of the step is judged. The first call per step (before the step is learned)
        advances the scan; hooks of the same step share its result."""
        if step.position == self._prepared:
            return self._served.get(step.position)
        self._prepared = step.position
        start = time.perf_counter()
        if step.events:  # the worker scans a slice after each batch: as of the previous one
            now = step.events[0].ts
            self.rated.advance(self._funnel_events, model, self.ranker, self._rated_catalog, now)
        served = self._served.get(step.position)
        if served is not None:
            served = self._served[step.position] = self._with_rated(served)
        self._observe_for_rating(step)
        self.seconds += time.perf_counter() - start
        return served

    def _observe_for_rating(self, step: Any) -> None:
        """The step's catalog records and event contents, as the worker's catalog takes them."""
        for item in step.catalog:
            self._rated_catalog.describe(item)
        for event in step.events:
            if event.item is not None and event.item_id not in self._rated_catalog:
                self._rated_catalog.remember(event.item_id, event.item)
        self._funnel_events = sum(event.type != "impression" for event in step.events)

    def _with_rated(self, served: _Served) -> _Served:
        """``served`` with the rated items each user lacks, and their truth as of the step."""
        block, pairs, gained = with_items(
            served.block, served.pairs, self.rated.best, self._rated_catalog
        )
        truths = []
        for number, truth, device, added in zip(
            served.events, served.truth, served.devices, gained, strict=True
        ):
            if truth is not None and added:
                rows = _true_rows(served.shop, self.users[number], device, added)
                truth = np.vstack([truth, rows])
            truths.append(truth)
        return dataclasses.replace(served, block=block, pairs=pairs, truth=truths)

    # ------------------------------------------------------------ the report

    def report(self) -> dict[str, Any]:
        """Per list and task: events, each metric and its bootstrap SE; ``comparisons``:
        mtl minus each list with paired SEs (see the module docstring)."""
        start = time.perf_counter()
        tasks = np.asarray(self.tasks, dtype=np.int64)
        users = np.asarray(self.users, dtype=object)
        metrics = METRICS if self.shop is not None else METRICS[:2]
        columns = len(metrics)
        arrays = {
            name: np.asarray(values, dtype=np.float64).reshape(-1, 3)[:, :columns]
            for name, values in self.values.items()
            if self.oracle is not None or name != "oracle"
        }
        if len(self.mtl) == len(self.tasks) and self.mtl:
            mtl = np.array([self.mtl[n] for n in range(len(self.tasks))])[:, :columns]
            arrays = {"mtl": mtl, **arrays}
        out: dict[str, Any] = {
            "k": K,
            "from_event": self.from_event,
            "half_life_s": self.half_life_s,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "sample_rates": self._rates or dict.fromkeys(TASKS, 1.0),
            "events": {task: int((tasks == t).sum()) for t, task in enumerate(TASKS)},
            "users": {task: len(set(users[tasks == t].tolist())) for t, task in enumerate(TASKS)},
        }
        comparisons: dict[str, dict[str, Any]] = {}
        for t, task in enumerate(TASKS):
            mask = tasks == t
            codes = users[mask]
            for name, values in arrays.items():
                part = values[mask]
                means = part.mean(axis=0) if len(part) else np.full(columns, np.nan)
                se = bootstrap_se(part, codes, seed=self.seed + t)
                entry = out.setdefault(name, {})[task] = {"events": int(mask.sum())}
                for m, metric in enumerate(metrics):
                    entry[metric] = float(means[m])
                    entry[f"{metric}_se"] = float(se[m])
                if name != "mtl" and "mtl" in arrays:
                    diff = arrays["mtl"][mask] - part
                    dmeans = diff.mean(axis=0) if len(diff) else np.full(columns, np.nan)
                    dse = bootstrap_se(diff, codes, seed=self.seed + t)
                    pair = comparisons.setdefault(f"mtl-{name}", {})[task] = {}
                    for m, metric in enumerate(metrics):
                        pair[f"{metric}_difference"] = float(dmeans[m])
                        pair[f"{metric}_difference_se"] = float(dse[m])
        if comparisons:
            out["comparisons"] = comparisons
        if "mtl" in arrays:
            out["candidates"] = self._candidates_report(tasks, users)
        if self.calibration:
            out["calibration"] = self._calibration_report(users)
        self.seconds += time.perf_counter() - start
        out["seconds"] = self.seconds
        return out

    def _candidates_report(self, tasks: np.ndarray, users: np.ndarray) -> dict[str, Any]:
        """Per task: ``recall`` and, on the simulator, ``best_expected_at_10`` and
        ``objective_expected_at_10``, with SEs."""
        values = np.array([self.candidates[n] for n in range(len(self.tasks))])
        names = ("recall", "best_expected_at_10", "objective_expected_at_10")
        names = names if self.shop is not None else names[:1]
        out: dict[str, Any] = {}
        for t, task in enumerate(TASKS):
            mask = tasks == t
            part = values[mask][:, : len(names)]
            means = part.mean(axis=0) if len(part) else np.full(len(names), np.nan)
            se = bootstrap_se(part, users[mask], seed=self.seed + t)
            out[task] = {}
            for m, name in enumerate(names):
                out[task][name] = float(means[m])
                out[task][f"{name}_se"] = float(se[m])
        return out

    def _calibration_report(self, users: np.ndarray) -> dict[str, Any]:
        """Per task, over every judged ``mtl`` list: the model's predicted and the shop's true
        count of the task its 10 items bring, their ratio and the ratio's bootstrap SE."""
        numbers = sorted(self.calibration)
        sums = np.array([self.calibration[n] for n in numbers])
        means = sums.mean(axis=0)
        resampled = resampled_means(sums, users[numbers], seed=self.seed)
        out: dict[str, Any] = {"lists": len(numbers)}
        for t, task in enumerate(TASKS):
            true = t + len(TASKS)
            se = math.nan
            if resampled is not None:
                se = float((resampled[:, t] / resampled[:, true]).std(ddof=1))
            out[task] = {
                "predicted_at_10": float(means[t]),
                "expected_at_10": float(means[true]),
                "ratio": float(means[t] / means[true]),
                "ratio_se": se,
            }
        return out


def print_summary(topk: dict[str, Any], write: Any = print) -> None:
    """The top-K table: per list, click and purchase figures with their standard errors."""
    events = ", ".join(f"{task} {topk['events'][task]:,}" for task in TASKS)
    write(
        f"top-{topk['k']} lists from event {topk['from_event']:,} ({events}; "
        f"± bootstrap SE over users; {topk['seconds']:.1f} s)"
    )
    metrics = [m for m in METRICS if any(m in topk[n]["click"] for n in LISTS if n in topk)]
    names = {"hit_rate_at_10": "hit", "ndcg_at_10": "ndcg", "expected_at_10": "expected"}
    header = "".join(
        f"{task + ' ' + names[m]:>18}" for task in ("click", "purchase") for m in metrics
    )
    write(f"  {'list':<20}{header}")
    for name in LISTS:
        if name not in topk:
            continue
        cells = []
        for task in ("click", "purchase"):
            entry = topk[name][task]
            for metric in metrics:
                value, se = entry.get(metric), entry.get(f"{metric}_se")
                cells.append(_cell(value, se))
        write(f"  {name:<20}" + "".join(f"{cell:>18}" for cell in cells))
    if "candidates" in topk:
        parts = []
        for task in ("click", "purchase"):
            entry = topk["candidates"][task]
            best, one_list = entry.get("best_expected_at_10"), entry.get("objective_expected_at_10")
            ceilings = ""
            if best is not None:
                ceilings = (
                    f", their best 10 expect {_cell(best, entry['best_expected_at_10_se'])}"
                    f" (by the objective: {_cell(one_list, entry['objective_expected_at_10_se'])})"
                )
            parts.append(
                f"{task} item among them {_cell(entry['recall'], entry['recall_se'])}{ceilings}"
            )
        write("  mtl's candidates: " + "; ".join(parts))
    if "calibration" in topk:
        calibration = topk["calibration"]
        ratios = ", ".join(
            f"{task} {_cell(calibration[task]['ratio'], calibration[task]['ratio_se'])}"
            for task in TASKS
        )
        write(f"  mtl's lists, predicted over true counts: {ratios}")


def _cell(value: float | None, se: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if se is None or not math.isfinite(se):
        return f"{value:.4f}"
    return f"{value:.4f}±{se:.4f}"
