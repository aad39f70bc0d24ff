"""Faults injected on purpose, for the fault-injection tests; inert unless asked for.

``RECSTREAM_FAULTS`` names the faults, comma-separated. Each fires once: a
marker file in the worker's checkpoint directory (``faults-fired/<name>``)
remembers that it fired, so the restarted worker runs clean (a real fault
that struck every time would be a bug, not a fault), and tells a test the
moment it fired. Never set it in production.

- ``poison_batch@P:O``: applying the ``events`` batch that holds offset ``O``
  of partition ``P`` raises :class:`InjectedFault` before the pipeline sees
  the batch.
- ``stall_batch@P:O``: the batch that holds ``P:O`` is applied to the
  model state, then the worker stalls (:data:`STALL_S`) before anything of
  it is published: a test that sees the marker kills the worker *during a
  batch*, its state ahead of every checkpoint and of what was sent.
- ``stall_publish@P:O``: the same batch's dead letters are acknowledged and
  its scores handed to the producer, then the worker stalls before the
  producer has flushed them: a kill lands *during a publish*.
- ``disk_full_checkpoint@N``: the ``N``-th checkpoint this worker process
  writes fails with ``ENOSPC`` (No space left on device), as a full disk
  would make it.

Example
-------
>>> import tempfile
>>> plan = FaultPlan.parse("poison_batch@1:10,disk_full_checkpoint@2", tempfile.mkdtemp())
>>> plan.check_batch([(0, 10), (1, 9)])
>>> plan.check_batch([(1, 10)])
Traceback (most recent call last):
...
streams.faults.InjectedFault: poison_batch@1:10
>>> plan.check_batch([(1, 10)])   # once only
>>> plan.disk_full(1), plan.disk_full(2), plan.disk_full(2)
(False, True, False)
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POSITIONED = ("poison_batch", "stall_batch", "stall_publish")
"""Kinds named ``kind@partition:offset``."""
COUNTED = ("disk_full_checkpoint",)
"""Kinds named ``kind@N``."""
KINDS = POSITIONED + COUNTED
STALL_S = 30.0
"""How long a stall lasts: far longer than a test needs to see its marker and kill."""


class InjectedFault(RuntimeError):
    """A fault raised on purpose by :class:`FaultPlan`."""


@dataclass(frozen=True)
class Fault:
    """One fault: its kind and where it strikes (a partition and offset, or a count)."""

    kind: str
    partition: int | None
    offset: int

    @property
    def name(self) -> str:
        if self.partition is None:
            return f"{self.kind}@{self.offset}"
        return f"{self.kind}@{self.partition}:{self.offset}"


class FaultPlan:
    """The faults still to fire, and where their markers go."""

    def __init__(self, faults: Iterable[Fault], marker_dir: str | Path) -> None:
        self.faults = list(faults)
        self.marker_dir = Path(marker_dir) / "faults-fired"

    @classmethod
    def parse(cls, spec: str | None, marker_dir: str | Path) -> FaultPlan:
        """Read ``kind@partition:offset`` or ``kind@N``, comma-separated (empty: no faults)."""
        faults = []
        for part in filter(None, (spec or "").split(",")):
            kind, _, where = part.strip().partition("@")
            partition, colon, offset = where.partition(":")
            if kind in POSITIONED and colon and partition.isdigit() and offset.isdigit():
                faults.append(Fault(kind, int(partition), int(offset)))
            elif kind in COUNTED and where.isdigit():
                faults.append(Fault(kind, None, int(where)))
            else:
                raise ValueError(
                    f"RECSTREAM_FAULTS: {part!r} is not one of {POSITIONED}@P:O or {COUNTED}@N"
                )
        return cls(faults, marker_dir)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def check_batch(self, positions: Iterable[tuple[int, int]]) -> None:
        """Raise once if a ``poison_batch`` fault names one of these (partition, offset)."""
        fault = self._find("poison_batch", positions)
        if fault is not None:
            self._mark(fault)
            raise InjectedFault(fault)

    def stall_batch(self, positions: Iterable[tuple[int, int]]) -> None:
        """Stall once if a ``stall_batch`` fault names one of these (after the batch applied)."""
        fault = self._find("stall_batch", positions)
        if fault is not None:
            self._mark(fault)
            time.sleep(STALL_S)

    def stall_publish_due(self, positions: Iterable[tuple[int, int]]) -> str | None:
        """The ``stall_publish`` fault naming one of these, not fired yet (None: no stall)."""
        return self._find("stall_publish", positions)

    def stall_publish(self, fault: str) -> None:
        """Mark ``fault`` fired and stall (called once the batch has been handed over)."""
        self._mark(fault)
        time.sleep(STALL_S)

    def disk_full(self, number: int) -> bool:
        """Whether this process's ``number``-th checkpoint is to fail for a full disk; once."""
        for fault in self.faults:
            if (
                fault.kind == "disk_full_checkpoint"
                and fault.offset == number
                and not (self.marker_dir / fault.name).exists()
            ):
                self._mark(fault.name)
                return True
        return False

    def _find(self, kind: str, positions: Iterable[tuple[int, int]]) -> str | None:
        held = set(positions)
        for fault in self.faults:
            if (
                fault.kind == kind
                and (fault.partition, fault.offset) in held
                and not (self.marker_dir / fault.name).exists()
            ):
                return fault.name
        return None

    def _mark(self, name: str) -> None:
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        (self.marker_dir / name).touch()


class FullDiskStore:
    """A checkpoint store whose disk is full: :meth:`save` fails with ``ENOSPC``.

    It starts the temporary file a real save would write and fails part way,
    as ``write`` does on a full disk; the worker must carry on with its
    older checkpoints.

    >>> import tempfile
    >>> from streams.checkpoint import CheckpointStore
    >>> FullDiskStore(CheckpointStore(tempfile.mkdtemp(), "events")).save({}, {0: 1})
    Traceback (most recent call last):
    ...
    OSError: [Errno 28] No space left on device (injected: disk_full_checkpoint)
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def save(self, state: dict[str, Any], offsets: dict[int, int]) -> Path:
        directory = Path(self.store.directory)
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f"checkpoint-{self.store.owner}-disk-full.tmp"
        with open(partial, "wb") as out:
            out.write(b"\0" * 4096)  # what fitted before the disk filled up
        partial.unlink()
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected: disk_full_checkpoint)")
