"""The label state of partitions another worker owns, kept up to date from what changes in it.

Workers of a group publish, every few seconds, the label state of each
partition they own, so that whoever takes a partition over continues where
its owner left off (:meth:`~online_models.label_stage.LabelStage.import_partition`).
The whole state is too big to send that often: on the demo stream (2,000
events/s over 4 partitions, impressions open 60 s, clicks up to an hour) a
partition held 17,000 open samples after 60,000 events, 2.5-3.7 MB of JSON,
and it grows with the label windows. So an owner sends what changed
(:meth:`~online_models.label_stage.LabelStage.partition_changes`), and each
other worker applies it here: a :class:`PartitionLog` holds every partition
this worker keeps for others, and gives back its whole state, in
:meth:`~online_models.label_stage.LabelStage.export_partition`'s format,
when this worker takes the partition over.

Example
-------
>>> from online_models.label_stage import LabelStage
>>> from producers.contract import Event
>>> owner, log = LabelStage(), PartitionLog()
>>> shown = owner.observe(Event("e1", 1_000, "impression", "u1", "i1"), partition=2)
>>> _ = owner.labels(shown.new, shown.to_learn())
>>> log.apply(2, owner.partition_changes(2))  # the first changes: the whole state
>>> clicked = owner.observe(Event("e2", 1_500, "click", "u1", "i1"), partition=2)
>>> _ = owner.labels(clicked.new, clicked.to_learn())
>>> changes = owner.partition_changes(2)  # the click: one sample changed, one event id
>>> changes["full"], len(changes["resolver"]["open"]), changes["resolver"]["seen_ids"]
(False, 1, ['e2'])
>>> log.apply(2, changes)
>>> log.export(2) == owner.export_partition(2)
True
>>> taker = LabelStage()  # takes partition 2 over from the log
>>> taker.import_partition(2, log.export(2))
{0: 0}
>>> taker.observe(Event("e2", 1_500, "click", "u1", "i1"), partition=2).duplicate
True
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from online_models.feedback import WAITING_ROW_KEY, waiting_row_like
from online_models.labels import HANDOVER_IDS, OPEN_ROW_KEY, TrackedSample, open_row_sample


@dataclass(slots=True)
class _Partition:
    """One partition's label state, with its samples by key so that changes merge in place."""

    open: dict[int, list[Any]]
    seen_ids: deque[str]
    clock: dict[str, int] | None
    batch_clicks: list[list[Any]]
    waiting: dict[int, list[Any]] | None  # None: its owner learns no provisional negatives
    assumed: dict[int, int] | None
    held: list[list[Any]]
    held_reasons: list[int]

    @classmethod
    def of_export(cls, state: dict[str, Any]) -> _Partition:
        """The partition :meth:`LabelStage.export_partition` wrote."""
        resolver, waits = state["resolver"], state["waits"]
        return cls(
            open={row[OPEN_ROW_KEY]: row for row in resolver["open"]},
            seen_ids=deque(resolver["seen_ids"], maxlen=HANDOVER_IDS),
            clock=resolver["clock"],
            batch_clicks=resolver["batch_clicks"],
            waiting=None if waits is None else {r[WAITING_ROW_KEY]: r for r in waits["waiting"]},
            assumed=None if waits is None else {key: stage for key, stage in waits["assumed"]},
            held=state["held"],
            held_reasons=state["held_reasons"],
        )

    def merge(self, changes: dict[str, Any]) -> None:
        """Apply the changes of :meth:`LabelStage.partition_changes` that are not whole."""
        resolver = changes["resolver"]
        for key in resolver["gone"]:
            self.open.pop(key, None)
        for row in resolver["open"]:
            self.open[row[OPEN_ROW_KEY]] = row
        self.seen_ids.extend(resolver["seen_ids"])
        forgotten = set(resolver["forgotten_ids"])  # the oldest ids: from the left
        while self.seen_ids and self.seen_ids[0] in forgotten:
            self.seen_ids.popleft()
        self.clock = resolver["clock"]
        self.batch_clicks = resolver["batch_clicks"]
        waits = changes["waits"]
        if self.waiting is not None and self.assumed is not None and waits is not None:
            for key in [*resolver["gone"], *(row[OPEN_ROW_KEY] for row in resolver["open"])]:
                self.waiting.pop(key, None)
                self.assumed.pop(key, None)
            for row in waits["waiting"]:
                self.waiting[row[WAITING_ROW_KEY]] = row
            for short in waits["waiting_like"]:  # like the open sample it changed with
                row = waiting_row_like(short, self._open_sample)
                self.waiting[row[WAITING_ROW_KEY]] = row
            for key, stage in waits["assumed"]:
                self.assumed[key] = stage
        self.held = self.held[: changes["held_from"]] + changes["held"]
        self.held_reasons = self.held_reasons[: changes["held_from"]] + changes["held_reasons"]

    def _open_sample(self, key: int) -> TrackedSample:
        return open_row_sample(self.open[key])

    def export(self) -> dict[str, Any]:
        """The partition in :meth:`LabelStage.export_partition`'s format (samples by key)."""
        waits = None
        if self.waiting is not None and self.assumed is not None:
            waits = {
                "waiting": [self.waiting[key] for key in sorted(self.waiting)],
                "assumed": [[key, self.assumed[key]] for key in sorted(self.assumed)],
            }
        return {
            "resolver": {
                "open": [self.open[key] for key in sorted(self.open)],
                "seen_ids": list(self.seen_ids),
                "clock": self.clock,
                "batch_clicks": self.batch_clicks,
            },
            "waits": waits,
            "held": self.held,
            "held_reasons": self.held_reasons,
        }


class PartitionLog:
    """The label state of partitions this worker does not own, kept up to date from their
    owners' changes (see the module docstring)."""

    def __init__(self) -> None:
        self._partitions: dict[int, _Partition] = {}

    def __contains__(self, partition: int) -> bool:
        """Whether the log holds ``partition``'s state."""
        return partition in self._partitions

    def apply(self, partition: int, changes: dict[str, Any]) -> None:
        """Apply ``partition``'s :meth:`LabelStage.partition_changes`: whole ones (``"full"``)
        replace what is held of it, the others merge into it.

        Changes that are not whole need the partition's state they follow: a
        :class:`KeyError` for a partition the log does not hold.
        """
        if changes["full"]:
            self._partitions[partition] = _Partition.of_export(changes)
        else:
            self._partitions[partition].merge(changes)

    def export(self, partition: int) -> dict[str, Any] | None:
        """The partition's whole state, for :meth:`LabelStage.import_partition` (None if not
        held)."""
        held = self._partitions.get(partition)
        return None if held is None else held.export()

    def drop(self, partition: int) -> None:
        """Forget ``partition`` (this worker owns it now, or nobody publishes it any more)."""
        self._partitions.pop(partition, None)

    def state_dict(self) -> dict[str, Any]:
        """Every partition held, as plain values (for a checkpoint).

        >>> PartitionLog.from_state(PartitionLog().state_dict()).export(0) is None
        True
        """
        return {"partitions": [[p, held.export()] for p, held in sorted(self._partitions.items())]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PartitionLog:
        """The log :meth:`state_dict` saved."""
        log = cls()
        for partition, export in state["partitions"]:
            log.apply(int(partition), {"full": True, **export})
        return log
