"""The one item catalog: the latest known content of each item, bounded.

The catalog topic and the content events carry both write it; the label
stage reads it for samples of items whose events come without content, and
the candidate pool for the content of the candidates it offers. At most
``max_items`` items are kept, the least recently updated dropped first;
whoever keeps state per item listens (:meth:`Catalog.listen`) for items
whose content changed or that were dropped.

Example
-------
>>> from producers.contract import ItemContent
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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from producers.contract import ItemContent

Listener = Callable[[str, "ItemContent | None"], Any]
"""Called with an item and its new content, or ``None`` when the item was dropped."""


class Catalog:
    """Item id -> :class:`ItemContent`, in the order of their last update (see the module)."""

    def __init__(self, max_items: int = 1_000_000) -> None:
        self.max_items = max_items
        self._items: dict[str, ItemContent] = {}
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def get(self, item_id: str) -> ItemContent | None:
        """The item's content, if known."""
        return self._items.get(item_id)

    def listen(self, listener: Listener) -> None:
        """Have ``listener`` told of every change of content and every item dropped."""
        self._listeners.append(listener)

    def remember(self, item_id: str, content: ItemContent) -> bool:
        """Keep ``content`` as the item's latest; whether the item was new.

        An equal content known already stays the object kept (samples then
        share one content object per item).
        """
        known = self._items.pop(item_id, None)
        kept = known if known is not None and (known is content or known == content) else content
        self._items[item_id] = kept
        if kept is not known:
            for listener in self._listeners:
                listener(item_id, kept)
        while len(self._items) > self.max_items:
            dropped = next(iter(self._items))
            del self._items[dropped]
            for listener in self._listeners:
                listener(dropped, None)
        return known is None

    def state_dict(self) -> list[list[Any]]:
        """``[item_id, category, brand, price]`` per item, least recently updated first."""
        return [[k, c.category, c.brand, c.price] for k, c in self._items.items()]

    def load_state_dict(self, rows: list[list[Any]]) -> None:
        """Add the items of :meth:`state_dict` (listeners are told, as for any update)."""
        for item_id, category, brand, price in rows:
            self.remember(item_id, ItemContent(category, brand, price))
