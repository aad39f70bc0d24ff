"""Item content as table rows: category path tokens, brand and price bucket, once per content.

Example
-------
>>> path_tokens("electronics.phone")
('electronics.phone', 'electronics', None, None)
>>> price_buckets([None, 199.0]).tolist()
[1, 17]
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from itertools import repeat

import numpy as np

from online_models.layout import PATH_TOKENS, PRICE_BUCKETS
from online_models.tables import IdTable


@lru_cache(maxsize=1 << 16)
def path_tokens(category: str | None) -> tuple[str | None, ...]:
    """The full path, then its prefixes from the top, ``None``-padded to PATH_TOKENS.

    >>> path_tokens("a.b.c")
    ('a.b.c', 'a', 'a.b', None)
    >>> path_tokens(None)
    (None, None, None, None)
    """
    if not category:
        return (None,) * PATH_TOKENS
    parts = category.split(".")
    prefixes = [".".join(parts[:depth]) for depth in range(1, len(parts))][: PATH_TOKENS - 1]
    tokens = (category, *prefixes)
    return tokens + (None,) * (PATH_TOKENS - len(tokens))


def price_buckets(prices: Sequence[float | None]) -> np.ndarray:
    """Log-scale price buckets: ``2 + floor(2 * log2(1 + price))``, 1 when missing.

    >>> price_buckets([None, 0.0, 1.0, 199.0, 1e30]).tolist()
    [1, 2, 4, 17, 63]
    """
    values = float_array(prices)
    missing = np.isnan(values)
    scaled = np.floor(2.0 * np.log2(1.0 + np.where(missing, 0.0, values)))
    buckets = 2 + np.clip(scaled, 0, PRICE_BUCKETS - 3).astype(np.int64)
    return np.where(missing, 1, buckets)


class ContentRows:
    """Token, brand and price-bucket rows of item contents, worked out once per content.

    A content is a ``(category, brand, price)`` triple; its rows are the
    category path's token rows (:func:`path_tokens`), the brand's row and the
    price bucket, and its log price. Items are scored and learned over and
    over, so the rows of each distinct content are kept (up to ``capacity``
    contents, then all forgotten at once) instead of splitting the path and
    looking its strings up for every sample. Kept rows are dropped whenever
    the token or brand table releases a row (eviction or expiry), and kept
    only once every id of the content holds a row (scoring does not insert).

    Each item row also remembers its content's slot, its price and the very
    category and brand objects it came with: a sample whose item row holds
    the same objects and price (the usual case: a producer's or catalog's
    content shared by all samples of an item) skips even hashing the triple.

    Example
    -------
    >>> tokens, brands = IdTable("token", 8), IdTable("brand", 8)
    >>> cache = ContentRows(tokens, brands, items=4)
    >>> rows, log_prices, complete = cache.rows(
    ...     ("a.b", "a.b"), ("x", None), (1.0, None), np.array([1, 2]), 5, insert=True)
    >>> rows.tolist()           # tokens a.b, a; brand; price bucket
    [[1, 2, 0, 0, 1, 4], [1, 2, 0, 0, 0, 1]]
    >>> len(cache), tokens.last_seen[1].item()
    (2, 5)
    """

    def __init__(
        self, tokens: IdTable, brands: IdTable, items: int, capacity: int = 1 << 16
    ) -> None:
        self.tokens, self.brands, self.capacity = tokens, brands, capacity
        self._slots: dict[tuple[str | None, str | None, float | None], int] = {}
        self._rows = np.zeros((capacity, PATH_TOKENS + 2), dtype=np.int64)
        self._log_prices = np.zeros(capacity)
        self._item_slot = np.full(items, -1, dtype=np.int64)
        self._item_identity = np.zeros((items, 2), dtype=np.int64)  # id() of category, brand
        self._item_objects = np.empty((items, 2), dtype=object)  # ...kept alive, so ids stay theirs
        self._item_price = np.zeros(items)
        self._forgotten = 0
        self._releases = self._table_releases()

    def __len__(self) -> int:
        """Contents kept."""
        return len(self._slots)

    def _table_releases(self) -> tuple[int, int]:
        return self.tokens.releases, self.brands.releases

    def rows(
        self,
        categories: Sequence[str | None],
        brands: Sequence[str | None],
        prices: Sequence[float | None],
        items: np.ndarray,
        now_ms: int,
        insert: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(B, PATH_TOKENS + 2)`` rows (tokens, brand, price bucket), log prices, completeness.

        ``items`` are the samples' item rows (0 when unknown). A content is
        complete when each of its named tokens and brand holds a row. With
        ``insert`` new tokens and brands get rows and every token and brand
        of the batch is marked as seen at ``now_ms``.
        """
        if self._table_releases() != self._releases:
            self._forget()
        columns = (categories, brands, prices)
        identity = np.stack(
            [np.fromiter(map(id, column), np.int64, len(items)) for column in columns[:2]], axis=1
        )
        price_values = float_array(prices)
        slots = self._item_slot[items]
        same_price = (self._item_price[items] == price_values) | (
            np.isnan(self._item_price[items]) & np.isnan(price_values)
        )
        same = (slots >= 0) & (self._item_identity[items] == identity).all(axis=1) & same_price
        rows, log_prices = self._rows[slots], self._log_prices[slots]
        complete = np.ones(len(items), dtype=bool)
        missing = np.flatnonzero(~same)
        if len(missing) == 0:
            if insert:
                self.touch(rows, now_ms)
            return rows, log_prices, complete
        forgotten = self._forgotten
        contents = [(categories[i], brands[i], prices[i]) for i in missing.tolist()]
        found = self._by_content(contents, now_ms, insert)
        if self._table_releases() != self._releases:
            # inserting evicted rows, perhaps rows kept here: look everything up again
            self._forget()
            missing = np.arange(len(items))
            found = self._by_content(list(zip(*columns, strict=True)), now_ms, insert)
        rows[missing], log_prices[missing], complete[missing], kept = found
        if self._forgotten == forgotten:  # the slots found are still the contents'
            remember = missing[(kept >= 0) & (items[missing] > 0)]
            item_rows = items[remember]
            self._item_slot[item_rows] = kept[(kept >= 0) & (items[missing] > 0)]
            self._item_identity[item_rows] = identity[remember]
            self._item_price[item_rows] = price_values[remember]
            chosen = remember.tolist()
            for column, values in enumerate((categories, brands)):
                objects = np.fromiter(map(values.__getitem__, chosen), object, len(chosen))
                self._item_objects[item_rows, column] = objects
        if insert:
            self.touch(rows, now_ms)
        return rows, log_prices, complete

    def forget_items(self, item_rows: np.ndarray) -> None:
        """Released item rows: their next owners' contents are looked up afresh."""
        self._item_slot[item_rows] = -1
        self._item_objects[item_rows] = None

    def touch(self, rows: np.ndarray, now_ms: int) -> None:
        """Mark the tokens and brands of content ``rows`` as seen at ``now_ms``."""
        self.tokens.touch(rows[:, :PATH_TOKENS].ravel(), now_ms)
        self.brands.touch(rows[:, PATH_TOKENS], now_ms)

    def _by_content(
        self, contents: list[tuple[str | None, str | None, float | None]], now_ms: int, insert: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows, log prices, completeness and kept slot (-1: not kept) of ``contents``."""
        slots = np.fromiter(map(self._slots.get, contents, repeat(-1)), np.int64, len(contents))
        rows, log_prices = self._rows[slots], self._log_prices[slots]
        complete = np.ones(len(contents), dtype=bool)
        missing = np.flatnonzero(slots < 0).tolist()
        if missing:
            fresh = list(dict.fromkeys(contents[i] for i in missing))
            fresh_rows, fresh_log_prices, fresh_complete, fresh_slots = self._compute(
                fresh, now_ms, insert
            )
            position = {content: j for j, content in enumerate(fresh)}
            which = [position[contents[i]] for i in missing]
            rows[missing], log_prices[missing] = fresh_rows[which], fresh_log_prices[which]
            complete[missing], slots[missing] = fresh_complete[which], fresh_slots[which]
        return rows, log_prices, complete, slots

    def _compute(
        self, contents: list[tuple[str | None, str | None, float | None]], now_ms: int, insert: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows, log prices, completeness and slot of distinct ``contents``; complete ones kept."""
        categories, brands, prices = zip(*contents, strict=True)
        paths = [path_tokens(category) for category in categories]
        keys = [token for path in paths for token in path]
        tokens = self.tokens.rows(keys, now_ms, insert).reshape(-1, PATH_TOKENS)
        brand_rows = self.brands.rows(brands, now_ms, insert)
        rows = np.column_stack([tokens, brand_rows, price_buckets(prices)])
        log_prices = np.log1p(float_array(prices))
        named_tokens = np.array([key is not None for key in keys]).reshape(-1, PATH_TOKENS)
        named_brands = np.array([brand is not None for brand in brands])
        complete = ((tokens > 0) | ~named_tokens).all(axis=1) & ((brand_rows > 0) | ~named_brands)
        if len(self._slots) + len(contents) > self.capacity:
            self._forget()
        kept = np.flatnonzero(complete)
        slots = np.full(len(contents), -1, dtype=np.int64)
        slots[kept] = np.arange(len(self._slots), len(self._slots) + len(kept))
        for j, slot in zip(kept.tolist(), slots[kept].tolist(), strict=True):
            self._slots[contents[j]] = slot
        self._rows[slots[kept]] = rows[kept]
        self._log_prices[slots[kept]] = log_prices[kept]
        return rows, log_prices, complete, slots

    def _forget(self) -> None:
        self._slots.clear()
        self._item_slot.fill(-1)
        self._item_objects.fill(None)
        self._forgotten += 1
        self._releases = self._table_releases()


def float_array(values: Sequence[float | None]) -> np.ndarray:
    """``values`` as float64, NaN for ``None``.

    >>> float_array([1.5, None]).tolist()
    [1.5, nan]
    """
    return np.array(values, dtype=np.float64)
