"""Each item's share of the recent clicks: the sampling probability of in-batch negatives.

In-batch negatives (:mod:`online_models.labels`) draw an item with its share
of a window's clicks. A window at a trickle holds a few dozen clicks, where
nearly every item's share is one click in n: the correction ``-log(k Q)``
would no longer tell a popular item from a niche one. Yi et al. (RecSys
2019) estimate ``Q`` over the stream instead; here it is the item's share of
the last ``size`` clicks within ``span_ms`` of event time, counted as they
pass (popularity moves on: an older click says little about today's draws).

>>> shares = ClickShares(size=4, span_ms=60_000)
>>> shares.extend(["a", "a", "b"], now_ms=0)
>>> shares.extend(["c", "a"], now_ms=1_000)  # the first "a" has left: four at most
>>> shares.share("a"), shares.share("b"), len(shares)
(0.5, 0.25, 4)
>>> shares.extend(["d"], now_ms=61_000)  # clicks of more than a minute before have left
>>> list(shares), shares.share("d")
(['c', 'a', 'd'], 0.3333333333333333)
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator


class ClickShares:
    """The recent clicked items, in order, with each item's count among them."""

    def __init__(self, size: int, span_ms: int) -> None:
        if size < 1 or span_ms < 0:
            raise ValueError(f"ClickShares needs size >= 1 and span_ms >= 0: {size}, {span_ms}")
        self.size = size
        self.span_ms = span_ms
        self._clicks: deque[tuple[int, str]] = deque()
        self._counts: Counter[str] = Counter()

    def extend(self, items: Iterable[str], now_ms: int) -> None:
        """Count ``items`` as clicks at ``now_ms``; the oldest beyond ``size`` or more than
        ``span_ms`` before ``now_ms`` leave."""
        clicks = self._clicks
        for item in items:
            if len(clicks) == self.size:
                self._drop_oldest()
            clicks.append((now_ms, item))
            self._counts[item] += 1
        while clicks and clicks[0][0] < now_ms - self.span_ms:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, old = self._clicks.popleft()
        self._counts[old] -= 1
        if not self._counts[old]:
            del self._counts[old]

    def share(self, item: str) -> float:
        """The item's share of the clicks held (0 for an item not among them)."""
        return self._counts[item] / len(self._clicks) if self._clicks else 0.0

    def state_dict(self) -> list[list]:
        """The clicks held, oldest first, as ``[ts, item]`` pairs."""
        return [[ts, item] for ts, item in self._clicks]

    def load_state_dict(self, clicks: list) -> None:
        """Hold ``clicks`` (:meth:`state_dict`'s pairs; bare items count as clicks at 0)."""
        self._clicks.clear()
        self._counts.clear()
        for click in clicks:
            ts, item = (0, click) if isinstance(click, str) else click
            self.extend([item], int(ts))

    def __len__(self) -> int:
        return len(self._clicks)

    def __iter__(self) -> Iterator[str]:
        return (item for _, item in self._clicks)
