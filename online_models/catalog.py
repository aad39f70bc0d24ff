"""The one item catalog: the latest known content of each item, bounded.

The catalog topic and the content events carry both write it; the label
stage reads it for samples of items whose events come without content, and
the candidate pool for the content of the candidates it offers. At most
``max_items`` items are kept, the least recently updated dropped first;
whoever keeps state per item listens (:meth:`Catalog.listen`) for items
whose content changed or that were dropped.

The catalog topic also takes items out of serving. A record with
``available: false`` *withdraws* an item: its content stays (its events are
learned from as before) but it is not :meth:`~Catalog.offered`; the item's
next record brings it back. A tombstone *removes* an item
(:meth:`~Catalog.remove`): its content is dropped, and the content of later
events about it is not kept, so an out-of-stock item still being clicked on
a stale page does not come back; a later catalog record does bring it back.

Example
-------
>>> from producers.contract import CatalogItem, ItemContent
>>> catalog = Catalog(max_items=2)
>>> dropped = []
>>> catalog.listen(lambda item_id, content: content is None and dropped.append(item_id))
>>> catalog.remember("i1", ItemContent("home.lamp", None, 20.0))
True
>>> catalog.remember("i1", ItemContent("home.lamp", None, 20.0))  # known: not new
False
>>> _ = catalog.remember("i2", ItemContent("toys"))
>>> _ = catalog.remember("i3", ItemContent("toys"))
>>> dropped, "i1" in catalog, catalog.get("i3").category
(['i1'], False, 'toys')
>>> _ = catalog.describe(CatalogItem("i3", 0, "toys", available=False))
>>> "i3" in catalog, catalog.offered("i3")
(True, False)
>>> catalog.remove("i2"), catalog.remember("i2", ItemContent("toys")), "i2" in catalog
(True, False, False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Set
from typing import Any

from producers.contract import CatalogItem, ItemContent

Listener = Callable[[str, "ItemContent | None"], Any]
"""Called with an item and its new content, or ``None`` when the item was dropped."""


class Catalog:
    """Item id -> :class:`ItemContent`, in the order of their last update (see the module)."""

    def __init__(self, max_items: int = 1_000_000) -> None:
        self.max_items = max_items
        self._items: dict[str, ItemContent] = {}
        self._withdrawn: set[str] = set()  # known items not offered
        self._removed: dict[str, None] = {}  # removed items, oldest first, at most max_items
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def item_ids(self) -> Iterator[str]:
        """Known item ids, least recently updated first."""
        return iter(self._items)

    def get(self, item_id: str) -> ItemContent | None:
        """The item's content, if known."""
        return self._items.get(item_id)

    def offered(self, item_id: str) -> bool:
        """Whether the item may be served: its content is known and it is not withdrawn."""
        return item_id in self._items and item_id not in self._withdrawn

    @property
    def withdrawn(self) -> Set[str]:
        """The known items the catalog withdrew (``available: false``)."""
        return self._withdrawn

    def was_removed(self, item_id: str) -> bool:
        """Whether a tombstone removed the item (and no catalog record brought it back)."""
        return item_id in self._removed

    def listen(self, listener: Listener) -> None:
        """Have ``listener`` told of every change of content and every item dropped."""
        self._listeners.append(listener)

    def remember(self, item_id: str, content: ItemContent) -> bool:
        """Keep the content an event carried as the item's latest; whether the item was new.

        Not for an item the catalog removed (nothing is kept: False). An
        equal content known already stays the object kept (samples then
        share one content object per item).
        """
        if item_id in self._removed:
            return False
        known = self._items.pop(item_id, None)
        kept = known if known is not None and (known is content or known == content) else content
        self._items[item_id] = kept
        if kept is not known:
            for listener in self._listeners:
                listener(item_id, kept)
        while len(self._items) > self.max_items:
            self._drop(next(iter(self._items)))
        return known is None

    def describe(self, item: CatalogItem) -> bool:
        """A catalog record: the item's content and availability; whether the item was new.

        A removed item is back.
        """
        self._removed.pop(item.item_id, None)
        new = self.remember(item.item_id, item.content)
        if item.available:
            self._withdrawn.discard(item.item_id)
        else:
            self._withdrawn.add(item.item_id)
        return new

    def remove(self, item_id: str) -> bool:
        """A tombstone: drop the item, and keep events from bringing it back; whether it was known.

        A catalog record (:meth:`describe`) brings it back.
        """
        self._removed.pop(item_id, None)
        self._removed[item_id] = None
        while len(self._removed) > self.max_items:
            del self._removed[next(iter(self._removed))]
        known = item_id in self._items
        if known:
            self._drop(item_id)
        return known

    def _drop(self, item_id: str) -> None:
        del self._items[item_id]
        self._withdrawn.discard(item_id)
        for listener in self._listeners:
            listener(item_id, None)

    def state_dict(self) -> dict[str, Any]:
        """``items``: ``[item_id, category, brand, price]`` per item, least recently updated
        first; ``withdrawn`` and ``removed``: item ids."""
        return {
            "items": [[k, c.category, c.brand, c.price] for k, c in self._items.items()],
            "withdrawn": sorted(self._withdrawn),
            "removed": list(self._removed),
        }

    def load_state_dict(self, state: dict[str, Any] | list[list[Any]]) -> None:
        """Add the items of :meth:`state_dict` (listeners are told, as for any update).

        Older checkpoints held the rows alone (every item available, none removed).
        """
        if isinstance(state, list):
            state = {"items": state}
        for item_id, category, brand, price in state["items"]:
            self.remember(item_id, ItemContent(category, brand, price))
        self._withdrawn.update(i for i in state.get("withdrawn", ()) if i in self._items)
        for item_id in state.get("removed", ()):
            self._removed[item_id] = None
