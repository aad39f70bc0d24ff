"""Keep Python's cyclic garbage collector off the latency path of a long-running worker.

The worker holds ~0.5 M long-lived Python objects (pending labels, candidate
pools, histories); each full collection walks all of them and stalls the
event loop for 200-300 ms (measured: batch p99 320 ms with, 92 ms without).
:class:`GcFreezer` moves every object alive into the collector's permanent
generation (:func:`gc.freeze`) at most once per ``interval_s``, so
collections walk only what was allocated since. Objects are still freed by
reference counting when dropped; a reference cycle that outlives an interval
and then becomes garbage is not reclaimed, which
``process_resident_memory_bytes`` would show.

Example
-------
>>> freezer = GcFreezer(interval_s=0.0)
>>> freezer.tick()
True
"""

from __future__ import annotations

import gc
import time


class GcFreezer:
    """Call :meth:`tick` after each batch; it freezes at most once per ``interval_s``."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._last = float("-inf")

    def tick(self) -> bool:
        """Freeze if the interval has passed; whether it did."""
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        gc.freeze()
        return True
