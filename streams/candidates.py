"""Where a user's candidate items come from before the model ranks them.

Four sources, merged without repeats: items popular overall, items popular in
the categories the user touched recently, the user's own recent items, and the
newest catalog items (so cold items get exposure before anyone clicks them).
Popularity is a count that decays by half every ``half_life_events`` funnel
events. Every structure is capped, so memory stays bounded.

Example
-------
>>> from producers.contract import CatalogItem, Event
>>> pool = CandidatePool(CandidateConfig(popular=2, new_items=1))
>>> for n in range(3):
...     pool.observe_catalog(CatalogItem(f"i{n}", 0, category="home.lamp"))
>>> pool.observe([Event("e1", 0, "click", "u1", "i0"), Event("e2", 0, "click", "u2", "i1")])
>>> sorted(item for item, content in pool.candidates("u1"))
['i0', 'i1', 'i2']
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    half_life_events: int = 20_000
    refresh_every: int = 500
    max_items: int = 200_000
    max_users: int = 500_000


class CandidatePool:
    """Catalog content, decayed popularity and per-user recency, for candidate generation."""

    def __init__(self, config: CandidateConfig | None = None) -> None:
        self.config = config or CandidateConfig()
        self._content: OrderedDict[str, ItemContent] = OrderedDict()
        self._newest: deque[str] = deque(maxlen=self.config.new_items)
        self._popularity: dict[str, float] = {}
        self._clock = 0
        self._user_items: OrderedDict[str, deque[str]] = OrderedDict()
        self._top: list[str] = []
        self._top_by_category: dict[str, list[str]] = {}
        self._since_refresh = 0

    @property
    def catalog_size(self) -> int:
        return len(self._content)

    def content(self, item_id: str) -> ItemContent | None:
        """What the catalog (or the events) said about an item, if anything."""
        return self._content.get(item_id)

    def observe_catalog(self, item: CatalogItem) -> None:
        """A catalog record: remember its content; a first sighting counts as new."""
        if item.item_id not in self._content:
            self._newest.append(item.item_id)
        self._remember(item.item_id, item.content)

    def observe(self, events: Sequence[Event]) -> None:
        """Funnel events raise popularity and the user's recency; content is remembered."""
        growth = math.log(2.0) / self.config.half_life_events
        for event in events:
            if event.item is not None and event.item_id not in self._content:
                self._remember(event.item_id, event.item)
            if event.type == "impression":
                continue
            self._clock += 1
            boost = _WEIGHT[event.type] * math.exp(self._clock * growth)
            self._popularity[event.item_id] = self._popularity.get(event.item_id, 0.0) + boost
            recent = self._user_items.pop(event.user_id, None)
            if recent is None:
                recent = deque(maxlen=self.config.recent_items)
            if not recent or recent[-1] != event.item_id:
                recent.append(event.item_id)
            self._user_items[event.user_id] = recent
            self._since_refresh += 1
        while len(self._user_items) > self.config.max_users:
            self._user_items.popitem(last=False)
        if self._since_refresh >= self.config.refresh_every or not self._top:
            self._refresh()

    def candidates(self, user_id: str) -> list[tuple[str, ItemContent]]:
        """The user's candidates with their content: recent items, their categories' best,
        overall best, newest."""
        recent = list(self._user_items.get(user_id, ()))
        categories: list[str] = []
        for item_id in reversed(recent):
            content = self._content.get(item_id)
            if content and content.category and content.category not in categories:
                categories.append(content.category)
            if len(categories) == self.config.recent_categories:
                break
        merged = dict.fromkeys(recent)
        for category in categories:
            merged.update(dict.fromkeys(self._top_by_category.get(category, ())))
        merged.update(dict.fromkeys(self._top))
        merged.update(dict.fromkeys(self._newest))
        content = self._content
        return [(item, known) for item in merged if (known := content.get(item)) is not None]

    def _remember(self, item_id: str, content: ItemContent) -> None:
        self._content[item_id] = content
        self._content.move_to_end(item_id)
        while len(self._content) > self.config.max_items:
            old, _ = self._content.popitem(last=False)
            self._popularity.pop(old, None)

    def _refresh(self) -> None:
        """Recompute the popular lists; renormalise scores so the exponent never overflows."""
        self._since_refresh = 0
        scale = math.exp(self._clock * math.log(2.0) / self.config.half_life_events)
        self._popularity = {k: v / scale for k, v in self._popularity.items() if v / scale > 1e-3}
        self._clock = 0
        ranked = heapq.nlargest(
            self.config.max_items, self._popularity.items(), key=lambda pair: pair[1]
        )
        self._top = [item for item, _ in ranked[: self.config.popular]]
        by_category: dict[str, list[str]] = {}
        for item, _ in ranked:
            content = self._content.get(item)
            if content is None or not content.category:
                continue
            bucket = by_category.setdefault(content.category, [])
            if len(bucket) < self.config.per_category:
                bucket.append(item)
        self._top_by_category = by_category

    def state_dict(self) -> dict[str, Any]:
        """Everything as plain values."""
        return {
            "content": [[k, c.category, c.brand, c.price] for k, c in self._content.items()],
            "newest": list(self._newest),
            "popularity": dict(self._popularity),
            "clock": self._clock,
            "user_items": {u: list(items) for u, items in self._user_items.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self._content = OrderedDict(
            (key, ItemContent(category, brand, price))
            for key, category, brand, price in state["content"]
        )
        self._newest = deque(state["newest"], maxlen=self.config.new_items)
        self._popularity = {k: float(v) for k, v in state["popularity"].items()}
        self._clock = int(state["clock"])
        self._user_items = OrderedDict(
            (u, deque(items, maxlen=self.config.recent_items))
            for u, items in state["user_items"].items()
        )
        self._refresh()
