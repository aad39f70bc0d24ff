"""One model learned by several workers: what a learner changed, exchanged by id.

Each ``recstream worker`` of a scaled-out group reads some partitions of
``events`` (keyed by user) into a full :class:`~online_models.learner.MultiTaskLearner`.
Every few seconds each worker takes what its learner changed since its last
exchange (:meth:`Replica.take`, a :class:`ModelDelta`) and every other worker
adds it to its own (:meth:`Replica.apply`). Row numbers differ between workers
(:class:`~online_models.tables.IdTable` hands rows out in arrival order), so
everything per row travels keyed by its id and lands on (or is inserted as)
the receiver's row of that id.

Shared state travels as changes, summed over workers:

- the dense parameters of the net (everything but the embedding tables),
  each worker's change weighted by its share of the stream (:meth:`Replica.take`'s
  ``weight``: the partitions it owns over all of them), so the shared layers
  move by the average of the workers' steps, as in federated averaging
  (McMahan et al. 2017), not by their sum: N workers that each took Adam
  steps from the same stale point in the same direction would otherwise
  overshoot N-fold (measured in process, two workers exchanging every
  3,000 events each: click AUC 0.747 summed, 0.764 averaged, 0.770 for one
  worker). The demand head is learned by one worker and is summed;
- the item, category token, brand and device rows of the embedding tables and
  their Adagrad sums, and the price-bucket rows (the same on every worker);
- the label statistics of items, brands and categories, the shop's, the
  categories' price moments and the departments' and shop's order quantities,
  in real (decayed, unscaled) units; every worker's sums age by the samples
  of all (a delta carries the decay its sender's samples caused);
- the items' sample and interaction counts (the cold gate);
- ``last_seen`` of every row sent (the receiver keeps the later one).

User state travels as the owner's values (a user is learned by one worker at
a time, the owner of its partition): for each user changed since the last
take and still held, its embedding row and Adagrad sums, label and order
statistics, counts, ``last_seen`` and history (entries as ids, mapped back to
the receiver's rows, inserting the ids it lacks). The receiver overwrites them.

Local, never sent: Adam's moments of the dense parameters (each worker steps
the summed parameters with its own), the scoring snapshots, the generator.

A change is measured against a *base*: a copy of the shared tables as they
stood at the last :meth:`~Replica.take` (plus what :meth:`~Replica.apply`
added since). Only rows touched since (``last_seen`` at or after the table's
clock at the last take: every row a learning step uses is touched) are
compared, so a delta costs what changed, not what the tables hold; a row
changed without being touched (the demand head's steps) is sent with its next
touch, as the difference to the base does not forget it. Tracking touched rows
by hand would need a hook in every place that writes a table; the base costs
memory (about 110 MB at the default capacities) and a 262,144-row scan of
``last_seen`` per table per take (a fraction of a millisecond).

A category token, brand or device new to a worker starts from a random
content vector, different on every worker. A delta carries that start
(*init*) with the id's first change; a worker that started the same id
itself in the meantime moves to whichever init has the smaller first
component, so all end at the same init plus everyone's changes (items and
users start at zero everywhere). An id one worker re-creates after evicting
it, while others still hold it, keeps the difference of their starts until
the workers are rebased from one checkpoint.

Example
-------
>>> from online_models.base import Sample
>>> from online_models.config import MultiTaskConfig
>>> from online_models.learner import MultiTaskLearner
>>> config = MultiTaskConfig().with_capacity(64)
>>> a, b = Replica(MultiTaskLearner(config)), Replica(MultiTaskLearner(config))
>>> a.learner.learn([Sample("u1", "i1", ts=1, category="x.y", click=1.0, cart=0.0)])
>>> delta = ModelDelta.from_bytes(a.take().to_bytes())
>>> delta.steps, delta.rows["item"], delta.rows["user"]
(1, 1, 1)
>>> b.apply(delta)
>>> b.learner.model_version, b.learner.item_interactions("i1"), b.take().size
(1, 1, 0)
>>> probe = [Sample("u1", "i1", ts=2, category="x.y")]
>>> bool(np.allclose(a.learner.predict(probe), b.learner.predict(probe)))
True
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import orjson
import torch

from online_models.layout import HISTORY_FIELDS, HISTORY_SECTIONS
from online_models.learner import MultiTaskLearner
from online_models.tables import NEVER, DecayedSums

SHARED = ("item", "token", "brand", "device")
"""Tables whose rows are shared state, summed over workers."""
RANDOM_INIT = ("token", "brand", "device")
"""Shared tables whose embedding rows start at random (the net's content table)."""
INIT_MEMORY = 8
"""Takes for which a worker remembers where an id it started began (to settle on one)."""
_HISTORY_TABLES = {
    column: HISTORY_SECTIONS[name]
    for column, name in enumerate(HISTORY_FIELDS)
    if HISTORY_SECTIONS[name] != "price"
}
"""History entry columns that hold rows of an id table, and the table."""
_FINGERPRINT_WEIGHTS = np.random.default_rng(1).integers(1, 1 << 63, 256, np.uint64) | np.uint64(1)
"""Odd weights of the users' fingerprints (:meth:`Replica._user_fingerprints`)."""

Field = np.ndarray | DecayedSums
"""A per-row array of the learner: plain, or decayed sums (stored over a shared scale)."""


@dataclass(slots=True)
class ModelDelta:
    """What one learner changed since its last :meth:`Replica.take`.

    ``ids[table]`` are the ids of the rows changed (the first ``rows[table]``)
    followed by ids only referred to (by the users' histories); ``arrays``
    the named changes (``"item.emb"``, ``"user.history"``, ``"dense"``, ...),
    row ``i`` of a table's arrays belonging to ``ids[table][i]``.
    """

    steps: int
    ids: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Rows changed, over every table (price buckets included)."""
        return sum(self.rows.values())

    def to_bytes(self) -> bytes:
        """A small JSON header and the arrays' bytes: floating-point values as they are, the
        rest zlib-compressed (level 1).

        An array mostly of zeros travels as a bitmap of its non-zero elements and their
        values (:func:`_pack`): most rows of a delta changed in a few columns only (the
        item rows of a 10,000-event delta are 81% zeros). What is left of the floats is
        changes of weights, which zlib shrank by a quarter (535 to 408 KB) at 9 of the 10
        ms an update's encoding took; the bitmaps, ids and integer columns shrink six-fold
        in under a millisecond. A 10,000-event delta: 1,856 KB as arrays, 570 KB sent.
        """
        names = sorted(self.arrays)
        compressed, plain, layout = [], [], []
        for name in names:
            array = np.ascontiguousarray(self.arrays[name])
            parts = _pack(array)
            values = plain if array.dtype.kind == "f" else compressed
            compressed.extend(parts[:-1])
            values.append(parts[-1])
            layout.append([name, array.dtype.str, array.shape, len(parts) > 1])
        header = orjson.dumps(
            {"steps": self.steps, "ids": self.ids, "rows": self.rows, "arrays": layout}
        )
        packed = zlib.compress(struct.pack("<I", len(header)) + header + b"".join(compressed), 1)
        return struct.pack("<I", len(packed)) + packed + b"".join(plain)

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelDelta:
        """Inverse of :meth:`to_bytes`."""
        (size,) = struct.unpack_from("<I", data)
        compressed = _Reader(zlib.decompress(data[4 : 4 + size]))
        (length,) = compressed.read(np.dtype("<u4"), 1)
        header = orjson.loads(compressed.read(np.dtype(np.uint8), int(length)).tobytes())
        plain = _Reader(data, 4 + size)
        arrays = {}
        for name, dtype, shape, sparse in header["arrays"]:
            kind, count = np.dtype(dtype), int(np.prod(shape))
            values = plain if kind.kind == "f" else compressed
            if sparse:
                nonzero = compressed.bitmap(count)
                array = np.zeros(count, kind)
                array[nonzero] = values.read(kind, int(np.count_nonzero(nonzero)))
            else:
                array = values.read(kind, count).copy()
            arrays[name] = array.reshape(shape)
        return cls(header["steps"], header["ids"], header["rows"], arrays)


@dataclass(slots=True)
class _Init:
    """Where a worker's row of a new content id began: weights then Adagrad sums.

    ``strong`` if it is a start some worker chose (a delta's or its own first
    take's), not one the worker gave an id it learned of without it.
    """

    row: np.ndarray
    strong: bool
    take: int


class Replica:
    """Takes a learner's changes and applies other workers' (see the module docstring).

    Parameters
    ----------
    learner
        The worker's learner; after replacing or loading its state, call
        :meth:`rebase`.
    """

    def __init__(self, learner: MultiTaskLearner) -> None:
        self.learner = learner
        self.rebase()

    def rebase(self) -> None:
        """The learner's current state is the new base: nothing of it is sent."""
        learner = self.learner
        tables = learner.encoder.tables
        self._base = {
            name: {f: _values(a).copy() for f, a in fields.items()}
            for name, fields in self._fields().items()
        }
        self._scales = {name: sums.scale for name, sums in self._decayed().items()}
        self._own = dict.fromkeys(self._scales, 1.0)  # decay by own samples, this interval
        self._since = dict.fromkeys(self._scales, 1.0)  # ... by others' deltas since the take
        self._own_last = dict.fromkeys(self._scales, 1.0)  # ... by own samples, last interval
        self._weights = dict.fromkeys(self._scales, 1.0)  # what a sender's change is aged by
        self._keys = {
            name: np.array(table.keys_of(np.arange(table.capacity)), dtype=object)
            for name, table in tables.items()
        }
        self._marks = {name: table.now_ms for name, table in tables.items()}
        self._pending = {name: np.empty(0, np.int64) for name in tables}
        self._fingerprints = self._user_fingerprints(np.arange(tables["user"].capacity))
        self._dense = _flat(learner.net)
        demand = {id(p) for p in learner.net.demand.parameters()}
        self._averaged = torch.cat(  # 1 on the layers every worker learns, 0 on the demand head's
            [torch.full((p.numel(),), float(id(p) not in demand)) for p in learner.net.parameters()]
        )
        self._version = learner.model_version
        self._inits: dict[str, dict[str, _Init]] = {name: {} for name in RANDOM_INIT}
        self._takes = 0

    # -- what the learner holds ---------------------------------------------------

    def _fields(self) -> dict[str, dict[str, Field]]:
        """The shared per-row arrays of each shared table (and ``"price"``, ``"shop"``)."""
        encoder = self.learner.encoder
        stats, values = encoder.stats, encoder.values
        extra = {
            "item": {
                "stats": stats["item"],
                "counts": encoder.tables["item"].counts,
                "interactions": encoder.tables["item"].interactions,
            },
            "token": {
                "stats": stats["category"],
                "prices": encoder.category_prices,
                "tops": values.tops,
            },
            "brand": {"stats": stats["brand"]},
            "device": {},
        }
        fields = {name: {**self._embedding(name), **extra[name]} for name in SHARED}
        fields["price"] = self._embedding("price")
        fields["shop"] = {"stats": encoder.shop_stats, "values": values.shop}
        return fields

    def _embedding(self, section: str) -> dict[str, np.ndarray]:
        """``emb`` and ``sq`` (Adagrad sums) of a section of the net, as row views (or none)."""
        net = self.learner.net
        if section not in net.sections:
            return {}
        table_name, start, end = net.sections[section]
        table = net.get_submodule(table_name)
        return {
            "emb": table.weight.numpy()[start:end],
            "sq": table.squared_gradients.numpy()[start:end],
        }

    def _user_fingerprints(self, rows: np.ndarray) -> np.ndarray:
        """A number per user row that changes whenever its state does: a random combination
        of the bits of its Adagrad sums, counts, history counter and statistics (in integers,
        so it is the same number however many rows are worked out at once)."""
        encoder = self.learner.encoder
        table = encoder.tables["user"]
        sq = self._embedding("user").get("sq")
        parts = [
            np.zeros((len(rows), 0), np.uint32) if sq is None else sq[rows].view(np.uint32),
            np.column_stack([table.counts[rows], table.interactions[rows]]).view(np.uint64),
            encoder.history.appended[rows, None].view(np.uint64),
            encoder.stats["user"].values[rows].view(np.uint64),
            encoder.values.users.values[rows].view(np.uint64),
        ]
        bits = np.concatenate([part.astype(np.uint64) for part in parts], axis=1)
        return (bits * _FINGERPRINT_WEIGHTS[: bits.shape[1]]).sum(axis=1, dtype=np.uint64)

    # -- take ---------------------------------------------------------------------

    def take(self, weight: float = 1.0) -> ModelDelta:
        """Everything changed since the last take (or rebase), marked as sent.

        ``weight``: this worker's share of the stream (1 alone). The shared dense layers keep
        that share of their change here too, and the delta carries it.
        """
        learner = self.learner
        self._takes += 1
        steps, self._version = learner.model_version - self._version, learner.model_version
        delta = ModelDelta(steps)
        self._own_decay()
        delta.arrays["aging"] = np.array(list(self._own.values()))
        self._own_last = dict(self._own)
        self._own, self._since = dict.fromkeys(self._own, 1.0), dict.fromkeys(self._own, 1.0)
        fields = self._fields()
        for name in SHARED:
            self._take_table(delta, name, fields[name])
            self._take_fixed(delta, f"{name}.unknown", fields[name], name, limit=1)
        self._take_fixed(delta, "price", fields["price"])
        self._take_fixed(delta, "shop", fields["shop"])
        self._take_users(delta)
        change = self._take_dense(weight)
        if change.any():
            delta.arrays["dense"] = change.numpy()
        for name in RANDOM_INIT:
            inits = self._inits[name]
            for key in [k for k, init in inits.items() if init.take < self._takes - INIT_MEMORY]:
                del inits[key]
        return delta

    def _take_dense(self, weight: float) -> torch.Tensor:
        """The dense parameters' change since the last take, ``weight`` of it on the layers
        every worker learns (the rest taken back from the net here too)."""
        dense = _flat(self.learner.net)
        change = dense - self._dense
        if weight < 1.0:
            withdrawn = change * (1.0 - weight) * self._averaged
            _add_dense(self.learner.net, -withdrawn)
            change -= withdrawn
            dense -= withdrawn
        self._dense = dense
        return change

    def _decayed(self) -> dict[str, DecayedSums]:
        """Every decayed-sums field, named ``table.field``, in a fixed order."""
        encoder = self.learner.encoder
        sums = {
            f"{name}.{key}": array
            for name, fields in self._fields().items()
            for key, array in fields.items()
            if isinstance(array, DecayedSums)
        }
        sums |= {"user.stats": encoder.stats["user"], "user.values": encoder.values.users}
        return dict(sorted(sums.items()))

    def _own_decay(self) -> None:
        """Fold the decay since last looked (this worker's own samples) into its interval's.

        Sums that renormalised meanwhile (once in ~300 half-lives) lose that interval's
        change: their base starts again from now.
        """
        for name, sums in self._decayed().items():
            if sums.scale > self._scales[name]:
                table, key = name.split(".")
                if table != "user":
                    self._base[table][key] = sums.values.copy()
            else:
                self._own[name] *= sums.scale / self._scales[name]
            self._scales[name] = sums.scale

    def _touched(self, name: str) -> tuple[np.ndarray, list[str]]:
        """Rows of ``name`` seen since the last take and held by an id, and their ids."""
        table = self.learner.encoder.tables[name]
        rows = np.union1d(self._pending[name], self._seen_since_mark(name))
        self._marks[name], self._pending[name] = table.now_ms, np.empty(0, np.int64)
        keys = table.keys_of(rows)
        held = np.fromiter((key is not None for key in keys), bool, len(keys))
        return rows[held], [key for key in keys if key is not None]

    def _seen_since_mark(self, name: str) -> np.ndarray:
        """Rows of ``name`` seen at or after its mark (the table's clock when last looked;
        ``NEVER`` before anything was learned: then every row held)."""
        mark = max(self._marks[name], NEVER + 1)
        return np.flatnonzero(self.learner.encoder.tables[name].last_seen >= mark)

    def _take_table(self, delta: ModelDelta, name: str, fields: dict[str, Field]) -> None:
        """The changed rows of a shared table; a row new since the base changed from its init."""
        rows, keys = self._touched(name)
        base, base_keys = self._base[name], self._keys[name]
        fresh = base_keys[rows] != np.array(keys, dtype=object)
        changes, inits = {}, None
        for key, array in fields.items():
            current = _values(array)[rows]
            reference = base[key][rows]
            reference[fresh] = 0
            changes[key] = (current - reference) * _scale(array)
        if name in RANDOM_INIT and "emb" in fields and fresh.any():
            inits = self._fresh_inits(name, rows, keys, fresh, fields)
            width = inits.shape[1] // 2
            changes["emb"][fresh] -= inits[:, :width]
            changes["sq"][fresh] -= inits[:, width:]
        changed = fresh | _any_row(changes, len(rows))
        for key, array in fields.items():
            base[key][rows] = _values(array)[rows]
        base_keys[rows] = keys
        picked = np.flatnonzero(changed)
        delta.ids[name] = [keys[i] for i in picked.tolist()]
        delta.rows[name] = len(picked)
        for key, change in changes.items():
            delta.arrays[f"{name}.{key}"] = change[picked]
        delta.arrays[f"{name}.last_seen"] = self.learner.encoder.tables[name].last_seen[
            rows[picked]
        ]
        if name in RANDOM_INIT and "emb" in fields:  # every fresh row is picked, in order
            delta.arrays[f"{name}.fresh"] = fresh[picked]
            delta.arrays[f"{name}.init"] = inits if inits is not None else _no_inits(fields)

    def _fresh_inits(
        self, name: str, rows: np.ndarray, keys: list[str], fresh: np.ndarray, fields: dict
    ) -> np.ndarray:
        """Starts of the content rows new since the base, remembered: a row free at the base
        started at its value there; a row reused since starts where it is now (its start is
        not known)."""
        inits = []
        for i in np.flatnonzero(fresh).tolist():
            row = rows[i]
            source = self._base[name] if self._keys[name][row] is None else fields
            start = np.concatenate([source["emb"][row], source["sq"][row]])
            self._inits[name][keys[i]] = _Init(start, True, self._takes)
            inits.append(start)
        return np.stack(inits)

    def _take_fixed(
        self,
        delta: ModelDelta,
        name: str,
        fields: dict[str, Field],
        table: str | None = None,
        limit: int | None = None,
    ) -> None:
        """Rows that mean the same on every worker (price buckets, the shop, the row 0 of
        unknown ids of ``table``, the first ``limit`` rows of it): those that differ from the
        base."""
        base = self._base[table or name]
        changes = {
            key: (_values(array)[:limit] - base[key][:limit]) * _scale(array)
            for key, array in fields.items()
        }
        rows = len(_values(next(iter(fields.values())))[:limit]) if fields else 0
        picked = np.flatnonzero(_any_row(changes, rows))
        for key, array in fields.items():
            base[key][picked] = _values(array)[picked]
            delta.arrays[f"{name}.{key}"] = changes[key][picked]
        delta.arrays[f"{name}.rows"] = picked
        delta.rows[name] = len(picked)

    def _take_users(self, delta: ModelDelta) -> None:
        """The changed users' own state, their history's rows as ids."""
        encoder = self.learner.encoder
        rows, keys = self._touched("user")
        fingerprints = self._user_fingerprints(rows)
        changed = (self._keys["user"][rows] != np.array(keys, dtype=object)) | (
            fingerprints != self._fingerprints[rows]
        )
        self._keys["user"][rows] = keys
        self._fingerprints[rows] = fingerprints
        picked = np.flatnonzero(changed)
        rows = rows[picked]
        delta.ids["user"] = [keys[i] for i in picked.tolist()]
        delta.rows["user"] = len(picked)
        table, history = encoder.tables["user"], encoder.history
        arrays = {f"user.{key}": array[rows] for key, array in self._embedding("user").items()}
        arrays |= {
            "user.stats": encoder.stats["user"].get(rows),
            "user.values": encoder.values.users.get(rows),
            "user.counts": table.counts[rows],
            "user.interactions": table.interactions[rows],
            "user.last_seen": table.last_seen[rows],
            "user.appended": history.appended[rows],
            "user.added_ms": history.added_ms[rows],
            "user.history": self._history_as_ids(delta, history.entries[rows]),
        }
        delta.arrays |= arrays

    def _history_as_ids(self, delta: ModelDelta, entries: np.ndarray) -> np.ndarray:
        """History entries with their table rows as positions (+1) in ``delta.ids``, appending
        the ids the delta does not carry yet; 0 stays 0 (and so does a row no id holds)."""
        tables = self.learner.encoder.tables
        entries = entries.copy()
        for column, name in _HISTORY_TABLES.items():
            ids = delta.ids.setdefault(name, [])
            position = {key: i for i, key in enumerate(ids)}
            values = entries[:, column]
            unique, inverse = np.unique(values, return_inverse=True)
            mapped = np.zeros(len(unique), np.int32)
            for i, key in enumerate(tables[name].keys_of(unique)):
                if key is None or unique[i] == 0:
                    continue
                if key not in position:
                    position[key] = len(ids)
                    ids.append(key)
                mapped[i] = position[key] + 1
            entries[:, column] = mapped[inverse.reshape(values.shape)]
        return entries

    # -- apply --------------------------------------------------------------------

    def apply(self, delta: ModelDelta) -> None:
        """Add another worker's changes (and take over its users); they join the base too,
        so :meth:`take` does not send them back."""
        learner = self.learner
        rows, new = self._insert(delta)
        self._own_decay()
        for (name, sums), aging in zip(self._decayed().items(), delta.arrays["aging"], strict=True):
            self._weights[name] = self._own_last[name] * self._since[name]
            sums.scale *= float(aging)
            self._since[name] *= float(aging)
            self._scales[name] = sums.scale
        fields = self._fields()
        for name in SHARED:
            if name in delta.ids:
                self._apply_table(delta, name, rows[name], new[name], fields[name])
            self._apply_fixed(delta, f"{name}.unknown", fields[name], name)
        for name in ("price", "shop"):
            self._apply_fixed(delta, name, fields[name])
        self._apply_users(delta, rows)
        change = delta.arrays.get("dense")
        if change is not None:
            change = torch.from_numpy(change)
            _add_dense(learner.net, change)
            self._dense += change
        learner.model_version += delta.steps
        self._version += delta.steps

    def _insert(self, delta: ModelDelta) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The receiver's rows of every id of the delta, inserting those it lacks (and which of
        them are new), each seen at the later of its two ``last_seen``; rows evicted to make
        room start afresh, as after a learning step.

        Rows seen here since the last take are set aside first and the mark moved past the
        rows written now, so the next take does not look at every row applied again.
        """
        learner = self.learner
        encoder = learner.encoder
        rows, new = {}, {}
        for name in (*SHARED, "user"):
            ids = delta.ids.get(name, [])
            table = encoder.tables[name]
            self._pending[name] = np.union1d(self._pending[name], self._seen_since_mark(name))
            before = table.rows(ids, table.now_ms, insert=False)
            seen = np.where(before > 0, table.last_seen[before], NEVER)
            sent = delta.arrays.get(f"{name}.last_seen", np.empty(0, np.int64))
            seen[: len(sent)] = np.maximum(seen[: len(sent)], sent)
            clock = max(table.now_ms, int(seen.max(initial=NEVER)))
            rows[name] = table.rows(ids, clock, insert=True)
            new[name] = before == 0
            table.last_seen[rows[name]] = np.where(seen == NEVER, clock, seen)
            self._marks[name] = table.now_ms  # what is seen here later is seen at this or later
        for name, released in encoder.take_released().items():
            if len(released):
                learner.net.reset_rows(name, torch.from_numpy(released), learner.generator)
        return rows, new

    def _apply_table(
        self,
        delta: ModelDelta,
        name: str,
        all_rows: np.ndarray,
        all_new: np.ndarray,
        fields: dict[str, Field],
    ) -> None:
        """Add the changes of a shared table; rows the base does not hold under their id
        (inserted now, or started here since the last take) get a base of start plus change."""
        count = delta.rows[name]
        ids = np.array(delta.ids[name], dtype=object)
        rows, new = all_rows[:count], all_new[:count]
        base, base_keys = self._base[name], self._keys[name]
        known = (base_keys[rows] == ids[:count]) & ~new
        starts = None
        if name in RANDOM_INIT and "emb" in fields:
            starts = self._settle(delta, name, rows, new, known, ids[:count], fields)
        for key, array in fields.items():
            values = _values(array)
            change = self._stored(delta.arrays[f"{name}.{key}"], f"{name}.{key}", array)
            values[rows] += change
            base[key][rows[known]] += change[known]
            reference = np.zeros_like(change[~known])
            if starts is not None and key in ("emb", "sq"):
                width = values.shape[1]
                reference = starts[~known][:, :width] if key == "emb" else starts[~known][:, width:]
            base[key][rows[~known]] = reference + change[~known]
        base_keys[rows] = ids[:count]
        extra = all_rows[count:][all_new[count:]]  # ids only referred to, inserted now
        for key, array in fields.items():
            base[key][extra] = _values(array)[extra]
        base_keys[extra] = ids[count:][all_new[count:]]
        if starts is not None:
            for key, row in zip(base_keys[extra].tolist(), extra.tolist(), strict=True):
                start = np.concatenate([fields["emb"][row], fields["sq"][row]])
                self._inits[name][key] = _Init(start, False, self._takes)

    def _settle(
        self,
        delta: ModelDelta,
        name: str,
        rows: np.ndarray,
        new: np.ndarray,
        known: np.ndarray,
        ids: np.ndarray,
        fields: dict[str, Field],
    ) -> np.ndarray:
        """Bring content rows to one start (see the module docstring); return each row's start
        (meaningful where the base does not hold the row under its id).

        A row inserted now starts at the sender's start (its own if the sender's row is
        old); a row started here and not yet sent moves to the sender's; a row sent already
        moves to the sender's start if that is smaller in its first component.
        """
        emb, sq = fields["emb"], fields["sq"]
        width = emb.shape[1]
        fresh = delta.arrays[f"{name}.fresh"]
        theirs = dict(
            zip(np.flatnonzero(fresh).tolist(), delta.arrays[f"{name}.init"], strict=True)
        )
        starts = np.zeros((len(rows), 2 * width), np.float32)
        inits, base = self._inits[name], self._base[name]
        for i in np.flatnonzero(fresh | new | ~known).tolist():
            row, key, sent = rows[i], ids[i], theirs.get(i)
            current = np.concatenate([emb[row], sq[row]])
            mine = inits.get(key)
            if new[i]:
                start = current if sent is None else sent
                inits[key] = _Init(start, sent is not None, self._takes)
            elif not known[i]:
                own = base if self._keys[name][row] is None else fields
                start = np.concatenate([own["emb"][row], own["sq"][row]])
                if sent is not None:
                    start = sent
                inits[key] = _Init(start, sent is not None, self._takes)
                current = current - np.concatenate([own["emb"][row], own["sq"][row]]) + start
            elif (
                sent is not None and mine is not None and (not mine.strong or sent[0] < mine.row[0])
            ):
                shift = sent - mine.row
                base["emb"][row] += shift[:width]
                base["sq"][row] += shift[width:]
                current = current + shift
                start = sent
                inits[key] = _Init(sent, True, self._takes)
            else:
                continue
            if new[i]:
                current = start
            emb[row], sq[row] = current[:width], current[width:]
            starts[i] = start
        return starts

    def _apply_fixed(
        self, delta: ModelDelta, name: str, fields: dict[str, Field], table: str | None = None
    ) -> None:
        """Add the changes of :meth:`_take_fixed`."""
        rows = delta.arrays.get(f"{name}.rows")
        if rows is None or not fields:
            return
        for key, array in fields.items():
            change = self._stored(delta.arrays[f"{name}.{key}"], f"{table or name}.{key}", array)
            _values(array)[rows] += change
            self._base[table or name][key][rows] += change

    def _stored(self, change: np.ndarray, name: str, array: Field) -> np.ndarray:
        """A sender's change in ``array``'s stored units.

        Decayed sums age by every worker's samples: a delta carries the decay its sender's
        own samples caused in its interval, by which every receiver ages all its sums; and
        a receiver ages the sender's change (in real units) by its own samples of its last
        interval and by the other deltas applied since its take, which the change missed.
        In rounds (every worker takes, then applies everyone else's) all end equal; out of
        step, they differ by the decay of a few intervals' samples on those intervals' changes.
        """
        if not isinstance(array, DecayedSums):
            return change
        return change * (self._weights[name] / array.scale)

    def _apply_users(self, delta: ModelDelta, rows: dict[str, np.ndarray]) -> None:
        """Overwrite the delta's users with the sender's state, its history mapped to rows here."""
        count = delta.rows.get("user", 0)
        if not count:
            return
        encoder, arrays = self.learner.encoder, delta.arrays
        users = rows["user"][:count]
        for key, array in self._embedding("user").items():
            array[users] = arrays[f"user.{key}"]
        for key, sums in (("stats", encoder.stats["user"]), ("values", encoder.values.users)):
            sums.values[users] = self._stored(arrays[f"user.{key}"], f"user.{key}", sums)
        table, history = encoder.tables["user"], encoder.history
        table.counts[users] = arrays["user.counts"]
        table.interactions[users] = arrays["user.interactions"]
        history.appended[users] = arrays["user.appended"]
        history.added_ms[users] = arrays["user.added_ms"]
        entries = arrays["user.history"].copy()
        for column, name in _HISTORY_TABLES.items():
            lookup = np.concatenate([[0], rows[name]]).astype(entries.dtype)
            entries[:, column] = lookup[entries[:, column]]
        history.entries[users] = entries
        self._keys["user"][users] = delta.ids["user"][:count]
        self._fingerprints[users] = self._user_fingerprints(users)


class _Reader:
    """Reads arrays one after another from ``data``, from ``offset`` on."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data, self.offset = data, offset

    def read(self, dtype: np.dtype, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype, count, self.offset)
        self.offset += values.nbytes
        return values

    def bitmap(self, count: int) -> np.ndarray:
        """Which of ``count`` elements :func:`_pack` kept (not zero)."""
        return np.unpackbits(self.read(np.dtype(np.uint8), (count + 7) // 8), count=count).view(
            bool
        )


def _pack(array: np.ndarray) -> list[bytes]:
    """``array``'s bytes: its values, after a bitmap of which elements are not zero when
    most are (then only those values).

    >>> [len(part) for part in _pack(np.array([[0.0, 2.5], [0.0, 0.0]], np.float32))]
    [1, 4]
    """
    flat = array.reshape(-1)
    nonzero = flat != 0
    if np.count_nonzero(nonzero) * 2 > len(flat):
        return [flat.tobytes()]
    return [np.packbits(nonzero).tobytes(), flat[nonzero].tobytes()]


def _values(array: Field) -> np.ndarray:
    """The stored values of a field (decayed sums: over their scale)."""
    return array.values if isinstance(array, DecayedSums) else array


def _scale(array: Field) -> float | int:
    """What a field's stored values are multiplied by to be real."""
    return array.scale if isinstance(array, DecayedSums) else 1


def _any_row(changes: dict[str, np.ndarray], rows: int) -> np.ndarray:
    """Which of ``rows`` rows any of ``changes`` changes."""
    changed = np.zeros(rows, bool)
    for change in changes.values():
        if rows:
            changed |= change.reshape(rows, -1).any(axis=1)
    return changed


def _no_inits(fields: dict[str, Field]) -> np.ndarray:
    """An empty array of starts of a content table's rows."""
    return np.empty((0, 2 * fields["emb"].shape[1]), np.float32)


def _add_dense(net: torch.nn.Module, change: torch.Tensor) -> None:
    """Add ``change`` (laid out as :func:`_flat`'s vector) to the parameters of ``net``."""
    with torch.no_grad():
        offset = 0
        for parameter in net.parameters():
            size = parameter.numel()
            parameter += change[offset : offset + size].view_as(parameter)
            offset += size


def _flat(net: torch.nn.Module) -> torch.Tensor:
    """The dense parameters of ``net``, as one float32 vector (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])
