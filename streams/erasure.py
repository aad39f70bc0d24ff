"""Erased users: their events from before the request are never applied again.

Erasing a user removes what the worker holds about them at once
(:meth:`streams.pipeline.Pipeline.erase_user`). What makes the erasure stick
is this list. A worker that crashes right after an erasure restores an older
checkpoint, which still holds the user, and reads ``events`` again from that
checkpoint's offsets: the user's events from before the request come back.
The erase request is read again too (the control offsets are in the same
checkpoint), but in no fixed order against those events, so it cannot undo
them by itself. So an erased user is entered here with the time of the
request (its Kafka record timestamp), and the pipeline skips every event of
theirs whose record timestamp is not later: after a crash, a rollback to an
older model, or a replay from the start of ``events``, the outcome is the
same as the first time. Events the user produces after the request are
applied as usual (they came back).

Kafka record timestamps, not the events' ``ts``: both the request and the
events are stamped by their producers' clocks when sent, while ``ts`` is
event time (a replayed log or the simulator runs in its own past).

The list holds a digest of each user id, never the id: at most
``max_users`` of them (about 100 bytes each), the oldest dropped first.

Example
-------
>>> erasures = Erasures()
>>> erasures.add("u1", requested_ms=1_000)
>>> erasures.covers("u1", 999), erasures.covers("u1", 1_001), erasures.covers("u2", 5)
(True, False, False)
>>> "u1" in str(erasures.state_dict()), erasures.erased(["u2", "u1"])
(False, ['u1'])
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

MAX_ERASED_USERS = 100_000
"""Erasures remembered at most (the oldest are dropped first)."""


class Erasures:
    """Digests of erased users and the record time of each one's request."""

    def __init__(self, max_users: int = MAX_ERASED_USERS) -> None:
        self.max_users = max_users
        self._requested: dict[str, int] = {}  # digest -> request time (ms), oldest first

    def __len__(self) -> int:
        return len(self._requested)

    def add(self, user_id: str, requested_ms: int) -> None:
        """``user_id`` asked to be erased at ``requested_ms`` (Kafka record time)."""
        digest = _digest(user_id)
        self._requested.pop(digest, None)
        self._requested[digest] = max(requested_ms, 0)
        while len(self._requested) > self.max_users:
            del self._requested[next(iter(self._requested))]

    def covers(self, user_id: str, record_ms: int) -> bool:
        """Whether an event of ``user_id`` stamped ``record_ms`` predates the user's erasure."""
        if not self._requested:
            return False
        requested = self._requested.get(_digest(user_id))
        return requested is not None and record_ms <= requested

    def erased(self, user_ids: Iterable[str]) -> list[str]:
        """Those of ``user_ids`` that were erased (to erase again from an older model)."""
        if not self._requested:
            return []
        return [user for user in user_ids if _digest(user) in self._requested]

    def state_dict(self) -> list[list[Any]]:
        """``[digest, request time]`` per erasure, oldest first."""
        return [[digest, when] for digest, when in self._requested.items()]

    def load_state_dict(self, rows: list[list[Any]]) -> None:
        """Restore :meth:`state_dict`."""
        self._requested = {str(digest): int(when) for digest, when in rows}


def _digest(user_id: str) -> str:
    return hashlib.blake2b(user_id.encode(), digest_size=16, person=b"recstream-erase").hexdigest()
