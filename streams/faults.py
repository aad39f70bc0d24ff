"""Faults injected on purpose, for the fault-injection tests; inert unless asked for.

``RECSTREAM_FAULTS`` names the faults, comma-separated, each as
``name@partition:offset``. Each fires once: a marker file in the worker's
checkpoint directory remembers that it fired, so the restarted worker runs
clean (a real fault that struck every time would be a bug, not a fault).
Never set it in production.

- ``poison_batch@P:O``: applying the ``events`` batch that holds offset ``O``
  of partition ``P`` raises :class:`InjectedFault` before the pipeline sees
  the batch.

Example
-------
>>> import tempfile
>>> plan = FaultPlan.parse("poison_batch@1:10", tempfile.mkdtemp())
>>> plan.check_batch([(0, 10), (1, 9)])
>>> plan.check_batch([(1, 10)])
Traceback (most recent call last):
...
streams.faults.InjectedFault: poison_batch@1:10
>>> plan.check_batch([(1, 10)])   # once only
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KINDS = ("poison_batch",)


class InjectedFault(RuntimeError):
    """A fault raised on purpose by :class:`FaultPlan`."""


@dataclass(frozen=True)
class Fault:
    kind: str
    partition: int
    offset: int

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.partition}:{self.offset}"


class FaultPlan:
    """The faults still to fire, and where their markers go."""

    def __init__(self, faults: Iterable[Fault], marker_dir: str | Path) -> None:
        self.faults = list(faults)
        self.marker_dir = Path(marker_dir) / "faults-fired"

    @classmethod
    def parse(cls, spec: str | None, marker_dir: str | Path) -> FaultPlan:
        """Read ``name@partition:offset,...`` (empty or None: no faults)."""
        faults = []
        for part in filter(None, (spec or "").split(",")):
            kind, _, where = part.strip().partition("@")
            partition, _, offset = where.partition(":")
            if kind not in KINDS or not partition.isdigit() or not offset.isdigit():
                raise ValueError(f"RECSTREAM_FAULTS: {part!r} is not one of {KINDS}@P:O")
            faults.append(Fault(kind, int(partition), int(offset)))
        return cls(faults, marker_dir)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def check_batch(self, positions: Iterable[tuple[int, int]]) -> None:
        """Raise once if a ``poison_batch`` fault names one of these (partition, offset)."""
        held = set(positions)
        for fault in self.faults:
            if fault.kind == "poison_batch" and (fault.partition, fault.offset) in held:
                self._fire(fault)

    def _fire(self, fault: Fault) -> None:
        marker = self.marker_dir / fault.name
        if marker.exists():
            return
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise InjectedFault(fault.name)
