"""Where a user's candidate items come from before the model ranks them.

Five sources, merged without repeats: items popular overall, items popular in
the categories the user touched recently, the user's own recent items, the
items the model rates best across the whole catalog (:attr:`CandidatePool.rated`,
kept by :mod:`streams.rated`), and the newest catalog items (so cold items get
exposure before anyone clicks them).
Popularity is a count that decays by half every ``half_life_events`` funnel
events. Every structure is capped, so memory stays bounded.

Only items the catalog offers are candidates (:meth:`Catalog.offered
<online_models.catalog.Catalog.offered>`): a withdrawn or removed item is
left out of every user's block at once, and the popular lists are rebuilt
without it before the next block after the next events.

Example
-------
>>> from producers.contract import CatalogItem, Event
>>> pool = CandidatePool(CandidateConfig(popular=2, new_items=1))
>>> for n in range(3):
...     pool.observe_catalog(CatalogItem(f"i{n}", 0, category="home.lamp"))
>>> pool.observe([Event("e1", 0, "click", "u1", "i0"), Event("e2", 0, "click", "u2", "i1")])
>>> sorted(item for item, content in pool.candidates("u1"))
['i0', 'i1', 'i2']
>>> pool.remove("i1")
>>> sorted(item for item, content in pool.candidates("u1"))
['i0', 'i2']
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.base import CandidateBlock
from online_models.catalog import Catalog
from producers.contract import CatalogItem, Event, ItemContent

_WEIGHT = {"click": 1.0, "cart": 3.0, "purchase": 5.0}


@dataclass(frozen=True)
class CandidateConfig:
    """How many candidates each source gives, and the memory caps."""

    popular: int = 30
    per_category: int = 15
    recent_categories: int = 3
    recent_items: int = 15
    new_items: int = 25
    rated: int = 30
    half_life_events: int = 20_000
    refresh_every: int = 500
    max_users: int = 500_000


class Popularity:
    """Decaying popularity scores and categories of items, in arrays, in the order items came.

    Items keep the order in which they got their score (a dropped item that
    comes back goes last), so a stable sort breaks ties as a dict in
    insertion order would. A refresh (:meth:`rescale`, :meth:`best`) is a
    few array operations over every item, not Python work per item.

    Example
    -------
    >>> popularity = Popularity()
    >>> for item, score, category in [("a", 1.0, "x"), ("b", 3.0, "y"), ("c", 2.0, "x")]:
    ...     popularity.add(item, score, category)
    >>> popularity.rescale(2.0, floor=0.6)          # a: 0.5, dropped
    >>> popularity.scores()
    {'b': 1.5, 'c': 1.0}
    >>> popularity.best(overall=1, per_category=1, limit=10)
    (['b'], {'x': ['c'], 'y': ['b']})
    >>> popularity.best(overall=1, per_category=1, limit=10, hidden={"b"})
    (['c'], {'x': ['c']})
    """

    def __init__(self) -> None:
        self._slot: dict[str, int] = {}
        self._items: list[str | None] = []  # None: a dropped item's slot
        self._scores = np.zeros(1024)
        self._live = np.zeros(1024, dtype=bool)
        self._codes = np.zeros(1024, dtype=np.int64)  # category code per slot, -1: none
        self._code: dict[str, int] = {}
        self._categories: list[str] = []

    def add(self, item_id: str, boost: float, category: str | None) -> None:
        """Add ``boost`` to the item's score (0 if it has none; then ``category`` is its)."""
        slot = self._slot.get(item_id)
        if slot is None:
            slot = self._append(item_id, category)
        self._scores[slot] += boost

    def set_category(self, item_id: str, category: str | None) -> None:
        """The item's category changed (or became known)."""
        slot = self._slot.get(item_id)
        if slot is not None:
            self._codes[slot] = self._code_of(category)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._slot

    def drop(self, item_id: str) -> None:
        """Forget the item's score."""
        slot = self._slot.pop(item_id, None)
        if slot is not None:
            self._items[slot] = None
            self._live[slot] = False

    def rescale(self, scale: float, floor: float) -> None:
        """Divide every score by ``scale``; drop the items left at ``floor`` or below."""
        used = len(self._items)
        self._scores[:used] /= scale
        for slot in np.flatnonzero(self._live[:used] & (self._scores[:used] <= floor)).tolist():
            self.drop(self._items[slot])
        if 2 * len(self._slot) < used:
            self._compact()

    def best(
        self, overall: int, per_category: int, limit: int, hidden: Iterable[str] = ()
    ) -> tuple[list[str], dict[str, list[str]]]:
        """The ``overall`` best items and each category's ``per_category`` best.

        Among the ``limit`` best items not ``hidden``, best first; ties in the order items came.
        """
        shown = self._live[: len(self._items)].copy()
        shown[[self._slot[item] for item in hidden if item in self._slot]] = False
        live = np.flatnonzero(shown)
        ranked = live[np.argsort(-self._scores[live], kind="stable")][:limit]
        codes = self._codes[ranked]
        by_code = np.argsort(codes, kind="stable")  # by category, each best first
        first = np.flatnonzero(np.r_[True, codes[by_code][1:] != codes[by_code][:-1]])
        place = np.arange(len(by_code)) - np.repeat(first, np.diff(np.r_[first, len(by_code)]))
        chosen = by_code[(place < per_category) & (codes[by_code] >= 0)]
        by_category: dict[str, list[str]] = {}
        for code, slot in zip(codes[chosen].tolist(), ranked[chosen].tolist(), strict=True):
            by_category.setdefault(self._categories[code], []).append(self._items[slot])
        return [self._items[slot] for slot in ranked[:overall].tolist()], by_category

    def scores(self) -> dict[str, float]:
        """Each item's score, in the order items came."""
        used = len(self._items)
        return {
            item_id: score
            for item_id, score in zip(self._items, self._scores[:used].tolist(), strict=True)
            if item_id is not None
        }

    def _append(self, item_id: str, category: str | None) -> int:
        slot = len(self._items)
        if slot == len(self._scores):
            self._resize(np.arange(slot), 2 * slot)
        self._slot[item_id] = slot
        self._items.append(item_id)
        self._scores[slot] = 0.0
        self._live[slot] = True
        self._codes[slot] = self._code_of(category)
        return slot

    def _code_of(self, category: str | None) -> int:
        if not category:
            return -1
        code = self._code.get(category)
        if code is None:
            code = self._code[category] = len(self._categories)
            self._categories.append(category)
        return code

    def _compact(self) -> None:
        """Close the gaps dropped items left (order kept)."""
        live = np.flatnonzero(self._live[: len(self._items)])
        self._resize(live, max(2 * len(live), 1024))
        self._items = [self._items[slot] for slot in live.tolist()]
        self._slot = {item_id: slot for slot, item_id in enumerate(self._items)}

    def _resize(self, kept: np.ndarray, capacity: int) -> None:
        """Arrays of ``capacity`` slots holding the ``kept`` slots' values first."""
        for name in ("_scores", "_live", "_codes"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: len(kept)] = old[kept]
            setattr(self, name, new)


class CandidatePool:
    """Decayed popularity, per-user recency and the newest items, for candidate generation.

    Item content comes from ``catalog`` (shared with the label stage in the
    worker, and saved by its owner); a catalog of its own if not given.
    """

    def __init__(
        self, config: CandidateConfig | None = None, catalog: Catalog | None = None
    ) -> None:
        self.config = config or CandidateConfig()
        self.catalog = catalog if catalog is not None else Catalog()
        self.catalog.listen(self._content_changed)
        self._newest: deque[str] = deque(maxlen=self.config.new_items)
        self._popularity = Popularity()
        self._clock = 0
        self._user_items: OrderedDict[str, deque[str]] = OrderedDict()
        self._changed: set[str] = set()  # users whose recent items changed since the last take
        self._top: list[str] = []
        self.rated: list[str] = []  # the model's best for anyone (streams.rated), set by its owner
        self._top_by_category: dict[str, list[str]] = {}
        self._since_refresh = 0

    def content(self, item_id: str) -> ItemContent | None:
        """What the catalog (or the events) said about an item, if anything."""
        return self.catalog.get(item_id)

    def observe_catalog(self, item: CatalogItem) -> None:
        """A catalog record: remember its content and availability.

        An item it makes offered that nobody interacted with lately (a new
        item, one back after its removal, one announced withdrawn and now
        launched) is among the newest; a popular one withdrawn or back has
        the popular lists rebuilt.
        """
        item_id = item.item_id
        was_offered = self.catalog.offered(item_id)
        self.catalog.describe(item)
        offered = self.catalog.offered(item_id)
        if offered == was_offered:
            return
        if item_id in self._popularity:
            self._refresh_due()
        elif offered:
            self._newest.append(item_id)
        elif item_id in self._newest:
            self._newest.remove(item_id)

    def remove(self, item_id: str) -> None:
        """A tombstone: the item is no candidate any more, until a catalog record brings it back."""
        if item_id in self._popularity:
            self._refresh_due()
        self.catalog.remove(item_id)  # the catalog tells _content_changed

    def observe(self, events: Sequence[Event]) -> None:
        """Funnel events raise popularity and the user's recency; content is remembered.

        Events about an item the catalog removed change nothing here.
        """
        growth = math.log(2.0) / self.config.half_life_events
        for event in events:
            if event.item is not None and event.item_id not in self.catalog:
                self.catalog.remember(event.item_id, event.item)
            if event.type == "impression" or self.catalog.was_removed(event.item_id):
                continue
            self._clock += 1
            boost = _WEIGHT[event.type] * math.exp(self._clock * growth)
            content = self.catalog.get(event.item_id)
            self._popularity.add(event.item_id, boost, content.category if content else None)
            recent = self._user_items.pop(event.user_id, None)
            if recent is None:
                recent = deque(maxlen=self.config.recent_items)
            if not recent or recent[-1] != event.item_id:
                recent.append(event.item_id)
            self._user_items[event.user_id] = recent
            self._changed.add(event.user_id)
            self._since_refresh += 1
        self._cap_users()
        if self._since_refresh >= self.config.refresh_every or not self._top:
            self._refresh()

    def forget_user(self, user_id: str) -> None:
        """Forget the user's recent items (an erasure; every worker reads it from ``control``,
        so it is not among the changes sent to others, and the id is kept nowhere)."""
        self._user_items.pop(user_id, None)
        self._changed.discard(user_id)

    def take_user_changes(self) -> dict[str, list[str]]:
        """The recent items (oldest first) of each user whose own state changed since the last
        take; for the worker that takes over the users' partition.

        Bounded by the users changed (one dropped by the ``max_users`` cap is
        not sent). What is not per user stays: popularity, the newest items
        and the catalog (shared, not per partition).

        >>> from producers.contract import Event
        >>> pool, other = CandidatePool(), CandidatePool()
        >>> pool.observe([Event("e1", 0, "click", "u1", "i1"), Event("e2", 0, "cart", "u1", "i2")])
        >>> changes = pool.take_user_changes()
        >>> changes, pool.take_user_changes()
        ({'u1': ['i1', 'i2']}, {})
        >>> other.apply_user_changes(changes)
        >>> other.take_user_changes()  # applied changes are the sender's, not news here
        {}
        """
        items = self._user_items
        changes = {u: list(items[u]) for u in sorted(self._changed) if u in items}
        self._changed.clear()
        return changes

    def apply_user_changes(self, changes: Mapping[str, list[str]]) -> None:
        """Give these users the recent items another pool's :meth:`take_user_changes` sent."""
        for user_id, recent in changes.items():
            self._user_items.pop(user_id, None)
            self._user_items[user_id] = deque(recent, maxlen=self.config.recent_items)
        self._cap_users()

    def _cap_users(self) -> None:
        """Drop the least recently active users beyond ``max_users``."""
        while len(self._user_items) > self.config.max_users:
            self._changed.discard(self._user_items.popitem(last=False)[0])

    def candidates(self, user_id: str) -> list[tuple[str, ItemContent]]:
        """The user's candidates with their content: recent items, their categories' best,
        overall best, newest (the pairs :meth:`block` gives the user, in order)."""
        block = self.block({user_id: 0})
        content = self.catalog
        return [
            (block.item_ids[i], content.get(block.item_ids[i])) for i in block.pair_item.tolist()
        ]

    def block(self, event_ts: Mapping[str, int]) -> CandidateBlock:
        """The users' candidates as one block, each user scored at its ``event_ts``.

        Per user, in order and without repeats: its recent items, its recent
        categories' best, the overall best, the model's best (:attr:`rated`),
        the newest (items the catalog does not offer left out); users left
        without candidates are left out. The overall best, the rated and the
        newest, most of every user's list, are looked up once for all users.

        >>> from producers.contract import CatalogItem, Event
        >>> pool = CandidatePool(CandidateConfig(popular=1, new_items=1))
        >>> for n in range(3):
        ...     pool.observe_catalog(CatalogItem(f"i{n}", 0, category="home.lamp"))
        >>> pool.observe([Event("e1", 0, "click", "u1", "i0"), Event("e2", 0, "click", "u2", "i1")])
        >>> block = pool.block({"u1": 5, "u2": 7})
        >>> pairs = zip(block.pair_user.tolist(), block.pair_item.tolist())
        >>> [(block.user_ids[u], block.item_ids[i]) for u, i in pairs]
        [('u1', 'i0'), ('u1', 'i1'), ('u1', 'i2'), ('u2', 'i1'), ('u2', 'i0'), ('u2', 'i2')]
        """
        content, withdrawn = self.catalog, self.catalog.withdrawn
        shared = [
            item
            for item in dict.fromkeys([*self._top, *self.rated, *self._newest])
            if item in content and item not in withdrawn
        ]
        row = dict(zip(shared, range(len(shared)), strict=True))  # item -> its place in the block
        shared_rows = list(range(len(shared)))
        users, times, sizes, pairs = [], [], [], []
        for user, ts in event_ts.items():
            own = [
                item
                for item in self._own_candidates(user)
                if item in content and item not in withdrawn
            ]
            rows = [row.setdefault(item, len(row)) for item in own]
            if any(item in row and row[item] < len(shared) for item in own):
                taken = set(rows)
                rows += [r for r in shared_rows if r not in taken]
            else:
                rows += shared_rows
            if rows:
                users.append(user)
                times.append(ts)
                sizes.append(len(rows))
                pairs += rows
        items = list(row)
        known = [content.get(item) for item in items]
        return CandidateBlock(
            user_ids=users,
            times=times,
            item_ids=items,
            categories=[c.category for c in known],
            brands=[c.brand for c in known],
            prices=[c.price for c in known],
            pair_user=np.repeat(np.arange(len(users)), sizes),
            pair_item=np.array(pairs, dtype=np.int64),
        )

    def _own_candidates(self, user_id: str) -> list[str]:
        """The user's recent items, then the best of the categories it touched recently."""
        recent = self._user_items.get(user_id)
        if not recent:
            return []
        categories: list[str] = []
        for item_id in reversed(recent):
            content = self.catalog.get(item_id)
            if content and content.category and content.category not in categories:
                categories.append(content.category)
            if len(categories) == self.config.recent_categories:
                break
        merged = dict.fromkeys(recent)
        for category in categories:
            merged.update(dict.fromkeys(self._top_by_category.get(category, ())))
        return list(merged)

    def _content_changed(self, item_id: str, content: ItemContent | None) -> None:
        """The catalog changed an item's content, or dropped the item (``None``)."""
        if content is None:
            self._popularity.drop(item_id)
            if item_id in self._newest:
                self._newest.remove(item_id)
        else:
            self._popularity.set_category(item_id, content.category)

    def _refresh_due(self) -> None:
        """Rebuild the popular lists with the next events (:meth:`observe`)."""
        self._since_refresh = self.config.refresh_every

    def _refresh(self) -> None:
        """Recompute the popular lists; renormalise scores so the exponent never overflows."""
        self._since_refresh = 0
        scale = math.exp(self._clock * math.log(2.0) / self.config.half_life_events)
        self._popularity.rescale(scale, floor=1e-3)
        self._clock = 0
        config = self.config
        self._top, self._top_by_category = self._popularity.best(
            config.popular, config.per_category, len(self.catalog), self.catalog.withdrawn
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything as plain values."""
        return {
            "newest": list(self._newest),
            "popularity": self._popularity.scores(),
            "clock": self._clock,
            "user_items": {u: list(items) for u, items in self._user_items.items()},
            "changed": sorted(self._changed),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the catalog restored first)."""
        self.catalog.load_state_dict(state.get("content", []))  # older checkpoints held it
        self._newest = deque(state["newest"], maxlen=self.config.new_items)
        self._popularity = Popularity()
        for item_id, score in state["popularity"].items():
            content = self.catalog.get(item_id)
            self._popularity.add(item_id, float(score), content.category if content else None)
        self._clock = int(state["clock"])
        self._user_items = OrderedDict(
            (u, deque(items, maxlen=self.config.recent_items))
            for u, items in state["user_items"].items()
        )
        self._changed = set(state.get("changed", ()))
        self._refresh()
