"""Several workers, one model: updates exchanged over the ``sync`` topic, Kafka all they share.

The workers of a topic prefix form one consumer group on ``events`` and
split its partitions. Each learns from the partitions it owns and, every
``sync_interval_s``, publishes an :class:`Update` on ``sync``:

- what its learner changed since its last update
  (:class:`online_models.replica.ModelDelta`: shared rows and dense layers as
  deltas that every worker adds, its users' rows as values);
- for each partition it owns, the next offset not applied, the events
  applied, and the partition's state outside the learner (labels in
  flight, the dedup window: :meth:`online_models.label_stage.LabelStage.export_partition`);
- the per-user candidate state that changed;
- what it counted of its own events for item demand since its previous
  update (:meth:`online_models.demand.DemandForecaster.take_counts`): every
  worker counts every event, and the owner of partition 0 forecasts.

**One update, one unit.** Its model changes and its offsets travel in the
same record(s), so whoever takes a partition over (after a rebalance, or
after its owner was SIGKILLed) resumes from offsets that match the model it
holds: what the dead owner applied after its last update is neither in the
model nor behind the offsets, and is applied again, once. An update larger
than a Kafka message is cut into chunks under 1 MB and counts only when
all its chunks have been read (:class:`Assembler`): a worker killed halfway
leaves nothing half-applied.

**Which updates a state holds** is a version vector, ``{worker: last
seq}`` (:class:`SyncState`). Every checkpoint carries it with the ``sync``
offset it had read up to, and a checkpoint is only taken right after an
update was published, so restoring one and applying the updates after that
offset that it does not hold rebuilds the group's model exactly. A worker
skips its own updates when they come back.

Example
-------
>>> update = Update("w1", seq=1, ts_ms=5, model=b"delta", partitions={0: {"offset": 7}})
>>> chunks = update.to_chunks(max_bytes=64)
>>> assembler, state = Assembler(), SyncState()
>>> [assembler.add(c) for c in chunks[:-1]] == [None] * (len(chunks) - 1)
True
>>> whole = assembler.add(chunks[-1])
>>> whole.model, whole.partitions, state.holds(whole)
(b'delta', {0: {'offset': 7}}, False)
>>> state.record(whole); state.holds(whole), state.partitions[0]["offset"]
(True, 7)
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from online_models.partition_log import PartitionLog

MAX_CHUNK_BYTES = 900_000
"""Payload per ``sync`` record: under the 1 MB a Kafka message may carry by default."""
_SEPARATOR = b"\n"


@dataclass
class Update:
    """One worker's contribution since its previous update (see the module docstring).

    ``partitions``: ``{partition: {"offset", "applied", "labels", ...}}`` for the
    partitions the sender owned; ``users``: per-user candidate state changed;
    ``demand``: the sender's own item demand counts, as columns ``bucket`` (ms),
    ``item``, ``kind``, ``n`` (empty in an update from before it was sent).
    """

    worker: str
    seq: int
    ts_ms: int
    model: bytes
    partitions: dict[int, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)  # the sender's metrics counters
    demand: dict[str, list[Any]] = field(default_factory=dict)

    def to_chunks(self, max_bytes: int = MAX_CHUNK_BYTES) -> list[bytes]:
        """The update as record values of at most ``max_bytes`` of payload each."""
        meta = zlib.compress(
            orjson.dumps(
                {
                    "partitions": self.partitions,
                    "users": self.users,
                    "counters": self.counters,
                    "demand": self.demand,
                },
                option=orjson.OPT_NON_STR_KEYS,
            ),
            1,
        )
        body = len(meta).to_bytes(8, "big") + meta + self.model
        pieces = [body[i : i + max_bytes] for i in range(0, len(body), max_bytes)] or [b""]
        return [
            orjson.dumps(
                {
                    "worker": self.worker,
                    "seq": self.seq,
                    "ts": self.ts_ms,
                    "chunk": n,
                    "chunks": len(pieces),
                }
            )
            + _SEPARATOR
            + piece
            for n, piece in enumerate(pieces)
        ]

    @classmethod
    def from_body(cls, header: dict[str, Any], body: bytes) -> Update:
        size = int.from_bytes(body[:8], "big")
        meta = orjson.loads(zlib.decompress(body[8 : 8 + size]))
        return cls(
            worker=header["worker"],
            seq=int(header["seq"]),
            ts_ms=int(header["ts"]),
            model=body[8 + size :],
            partitions={int(p): value for p, value in meta["partitions"].items()},
            users=meta["users"],
            counters=meta.get("counters", {}),
            demand=meta.get("demand", {}),
        )


class Assembler:
    """Collects chunks into whole updates; a worker's unfinished update is dropped when a
    later one of that worker starts (its sender died or gave up halfway).

    ``state``: chunks of updates it holds already (a worker's own, read back) are passed
    over on their small header, neither kept nor decoded.
    """

    def __init__(self, state: SyncState | None = None) -> None:
        self._pieces: dict[str, tuple[int, list[bytes]]] = {}
        self._state = state

    def add(self, value: bytes) -> Update | None:
        """The whole update once ``value`` completes one, else None."""
        head, _, piece = value.partition(_SEPARATOR)
        header = orjson.loads(head)
        worker, seq, chunk = header["worker"], int(header["seq"]), int(header["chunk"])
        if self._state is not None and self._state.holds_seq(worker, seq):
            return None
        held = self._pieces.get(worker)
        if held is None or held[0] != seq or chunk == 0:
            held = (seq, [])
            self._pieces[worker] = held
        if chunk != len(held[1]):  # a gap: a chunk of it never came
            del self._pieces[worker]
            return None
        held[1].append(piece)
        if len(held[1]) < int(header["chunks"]):
            return None
        del self._pieces[worker]
        return Update.from_body(header, b"".join(held[1]))


@dataclass
class SyncState:
    """What of the group's updates a state holds, and the latest word on every partition.

    ``vector``: ``{worker: last seq held}``; ``position``: the next ``sync``
    offset to read; ``partitions``: the latest update's record of each
    partition, with its ``worker`` and ``seq``; ``labels``: each partition's
    label state, rebuilt from the changes the updates carry (their
    ``"labels"``, :class:`~online_models.partition_log.PartitionLog`); ``worker``: the id of the
    worker whose checkpoint this is (it keeps it across restarts; None in a
    snapshot another worker starts from).
    """

    vector: dict[str, int] = field(default_factory=dict)
    position: int = 0
    partitions: dict[int, dict[str, Any]] = field(default_factory=dict)
    labels: PartitionLog = field(default_factory=PartitionLog)
    worker: str | None = None

    def holds(self, update: Update) -> bool:
        """Whether ``update`` is in the state already (its own, or applied before)."""
        return self.holds_seq(update.worker, update.seq)

    def holds_seq(self, worker: str, seq: int) -> bool:
        """Whether ``worker``'s update number ``seq`` is in the state already."""
        return seq <= self.vector.get(worker, 0)

    def hold(self, worker: str, seq: int) -> None:
        """``worker``'s updates up to number ``seq`` count as held (never applied again)."""
        self.vector[worker] = max(seq, self.vector.get(worker, 0))

    def record(self, update: Update, labels: bool = True) -> None:
        """``update`` is now in the state (its label changes too, unless not ``labels``)."""
        self.hold(update.worker, update.seq)
        for partition, record in update.partitions.items():
            record = dict(record)
            changes = record.pop("labels", None)
            if changes is not None and labels:
                try:
                    self.labels.apply(partition, changes)
                except KeyError:  # changes to a state never seen whole: unusable
                    self.labels.drop(partition)
            self.partitions[partition] = {**record, "worker": update.worker, "seq": update.seq}

    def state_dict(self, labels: PartitionLog | None = None) -> dict[str, Any]:
        """Plain values for a checkpoint; ``labels`` instead of this state's own, if given."""
        labels = self.labels if labels is None else labels
        return {
            "vector": dict(self.vector),
            "position": self.position,
            "partitions": [[p, orjson.dumps(r).decode()] for p, r in self.partitions.items()],
            "labels": orjson.dumps(labels.state_dict()).decode(),
            "worker": self.worker,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> SyncState:
        if not state:
            return cls()
        return cls(
            vector={str(w): int(s) for w, s in state["vector"].items()},
            position=int(state["position"]),
            partitions={int(p): orjson.loads(r) for p, r in state["partitions"]},
            labels=PartitionLog.from_state(orjson.loads(state["labels"])),
            worker=state.get("worker"),
        )


def replay(values: Iterable[bytes]) -> tuple[SyncState, list[Update]]:
    """What the group's model holds, as ``sync`` read from its start (``values``) records it:
    the latest word on every partition, and every whole update in order (model bytes kept).

    >>> chunks = Update("w", 1, 0, b"", {2: {"offset": 9}}).to_chunks()
    >>> state, updates = replay(chunks)
    >>> state.partitions[2]["offset"], [u.worker for u in updates]
    (9, ['w'])
    """
    state, assembler, updates = SyncState(), Assembler(), []
    for value in values:
        update = assembler.add(value)
        if update is not None and not state.holds(update):
            state.record(update)
            updates.append(update)
    return state, updates
