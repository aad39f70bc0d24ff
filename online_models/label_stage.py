"""The label stage: events in; samples to score, and the one label stream every model learns.

Label policy lives here and only here. Per micro-batch:

1. :meth:`LabelStage.observe` each event: the resolver
   (:class:`~online_models.labels.LabelResolver`) turns it into new samples
   (to be remembered and scored before any of their labels is learned) and
   label updates of earlier samples.
2. The caller has its learner :meth:`~online_models.base.Learner.remember`
   the new samples (their scoring-time features) and score them.
3. :meth:`LabelStage.labels` then gives the labels to learn now, each with
   its reason: the resolver's (``resolved``), minus the closures of stages
   already learned as provisional negatives; positives that arrive after
   such a negative (``corrected``); and the provisional negatives whose wait
   is over in event time (``provisional``, :mod:`online_models.feedback`).

A balanced start: with impressions, a click resolves at once and the
negative of the impression beside it only after the click wait. A fresh
model that learned in that order would see nothing but positives for its
first wait and predict clicks everywhere (measured on the demo's stream:
mean click prediction 0.67 after its first second, against a click rate of
0.07). So the stage holds every label back until the first wait has passed
in event time, then lets the held ones go with the first provisional
negatives; from then on both classes arrive at the same pace.

A partition moves between workers with its pending labels
(:meth:`LabelStage.export_partition`, :meth:`~LabelStage.import_partition`,
:meth:`~LabelStage.drop_partition`): events are keyed by user, so a
sample's later events and its deadlines belong to its partition. The other
workers keep each partition's state up to date from what changed in it
(:meth:`LabelStage.partition_changes`,
:class:`~online_models.partition_log.PartitionLog`): a partition's whole
state on the demo stream is megabytes, what changes in it in 3 s is not.

Every model learns exactly this stream, the worker's and each one in
``recstream bench quality``, so differences between models are differences
of models, not of label policy.

Example
-------
>>> from producers.contract import Event
>>> waits = (1_000, 5_000, 5_000)  # for a click, a cart, a purchase
>>> stage = LabelStage(LabelConfig(click_window_ms=10_000, provisional_waits_ms=waits))
>>> shown = stage.observe(Event("e1", 1_000, "impression", "u1", "i1"))
>>> stage.labels(shown.new, shown.to_learn()).samples  # nothing to learn yet
[]
>>> later = stage.observe(Event("e2", 2_500, "impression", "u2", "i2"))
>>> batch = stage.labels(later.new, later.to_learn())  # i1 waited 1 s for a click: a negative
>>> [(s.item_id, s.labels()) for s in batch.samples], batch.reasons()
([('i1', (0.0, 0.0, 0.0))], ['provisional'])
>>> click = stage.observe(Event("e3", 2_600, "click", "u1", "i1"))
>>> batch = stage.labels(click.new, click.to_learn())  # the click after all: corrected
>>> [(s.item_id, s.labels()) for s in batch.samples], batch.reasons()
([('i1', (1.0, None, None))], ['corrected'])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from online_models.catalog import Catalog
from online_models.feedback import ProvisionalNegatives
from online_models.labels import (
    OPEN_ROW_KEY,
    UNKNOWN_PARTITION,
    LabelConfig,
    LabelResolver,
    Resolution,
    TrackedSample,
    labelled,
    sample_from_row,
    sample_to_row,
)
from online_models.layout import label_matrix
from producers.contract import Event

REASONS = ("resolved", "corrected", "provisional")
"""Why a label is learned (see the module docstring)."""
_RESOLVED, _CORRECTED, _PROVISIONAL = range(len(REASONS))


@dataclass(slots=True)
class LabelBatch:
    """Labelled samples to learn now, and each one's reason (an index into :data:`REASONS`)."""

    samples: list[TrackedSample] = field(default_factory=list)
    reason_codes: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))

    def reasons(self) -> list[str]:
        """Each sample's reason, by name."""
        return [REASONS[code] for code in self.reason_codes.tolist()]

    def counts(self) -> dict[str, int]:
        """Samples per reason."""
        return dict(zip(REASONS, np.bincount(self.reason_codes, minlength=3).tolist(), strict=True))


class LabelStage:
    """The label resolver and the provisional negatives, as one stage (see the module docstring).

    Parameters
    ----------
    config
        Windows, waits and memory bounds.
    catalog
        The item catalog (see :class:`~online_models.labels.LabelResolver`).
    """

    def __init__(self, config: LabelConfig | None = None, catalog: Catalog | None = None) -> None:
        self.config = config or LabelConfig()
        self.resolver = LabelResolver(self.config, catalog)
        waits = self.config.provisional_waits_ms
        self.waits = None if waits is None else ProvisionalNegatives(waits)
        self.learned: Counter[str] = Counter()
        self.learning_from: int | None = None  # event time the balanced start ends
        self.held = LabelBatch()
        self._held_partitions: list[int] = []  # each held sample's partition
        self._batch_partitions: dict[int, int] = {}  # while holding: the batch's keys' partitions
        self._noting = False  # whether partition_changes was asked for: waits' changes noted
        self._held_sent: dict[int, int] = {}  # per partition: its held labels changes carried

    def observe(self, event: Event, partition: int = 0) -> Resolution:
        """Apply one event (see :meth:`LabelResolver.observe`)."""
        out = self.resolver.observe(event, partition)
        if self._holding():
            self._batch_partitions.update((s.key, partition) for s in out.new + out.resolved)
        return out

    def close_batch(self, final: bool = False) -> list[TrackedSample]:
        """Without impressions, the batch's clicks and their in-batch negatives, new samples
        with their labels (:meth:`LabelResolver.close_batch`; ``final`` at the end of a
        finite stream): score and learn them with the batch's other samples. Call it after
        the batch's last event."""
        return self.resolver.close_batch(final)

    def labels(self, new: Sequence[TrackedSample], resolved: Sequence[TrackedSample]) -> LabelBatch:
        """The labels to learn now, once ``new`` samples were scored and ``resolved`` came.

        ``resolved`` are the resolver's labelled samples of the batch (new ones
        with labels first, then updates, as :meth:`Resolution.to_learn` gives).
        """
        if self.waits is None:
            out = LabelBatch(list(resolved), np.zeros(len(resolved), np.int8))
        else:
            now = self.resolver.watermark  # event time: a sample stamped ahead does not move it
            self.waits.scored(new, until_ms=now)
            admission = self.waits.admit(resolved, label_matrix(resolved), until_ms=now)
            keep = admission.learn
            samples = [s for s, learn in zip(resolved, keep.tolist(), strict=True) if learn]
            codes = np.where(admission.corrects[keep], _CORRECTED, _RESOLVED).astype(np.int8)
            self.waits.advance(now)
            waited, negatives = self.waits.due()
            rows = negatives.tolist()
            samples += [labelled(s, *_labels(row)) for s, row in zip(waited, rows, strict=True)]
            out = LabelBatch(samples, np.r_[codes, np.full(len(waited), _PROVISIONAL, np.int8)])
            out = self._balanced(out, now)
            self._batch_partitions.clear()
            if self._noting:
                self._note_waits()
        self.learned.update(out.counts())
        return out

    def forget_user(self, user_id: str) -> list[int]:
        """Drop the user's pending labels (open, waiting, held back); return their keys."""
        keys = set(self.resolver.forget_user(user_id))
        if self.waits is not None:
            keys.update(self.waits.forget_user(user_id))
        keys.update(self._release_held([s.user_id != user_id for s in self.held.samples]))
        return sorted(keys)

    def export_partition(self, partition: int) -> dict[str, Any]:
        """Everything held for ``partition``, as plain values, for a worker that takes it over
        (:meth:`import_partition`): its open samples with their deadlines, event ids in the
        deduplication window and times (:meth:`LabelResolver.export_partition`), its samples
        waiting to be learned as provisional negatives or assumed so, and its labels held
        back by the balanced start. Call it between batches (after :meth:`labels`).

        Its size is bounded by the label windows and the deduplication window.
        What is not per partition stays: the negative sampler's generator and
        recent clicks, the counts, the balanced start, and the event-time clock
        of the provisional waits (a wait taken over is due when the new owner's
        event time passes it).

        >>> old, new = LabelStage(), LabelStage()
        >>> shown = old.observe(Event("e1", 1_000, "impression", "u1", "i1"), partition=2)
        >>> _ = old.labels(shown.new, shown.to_learn())
        >>> new.import_partition(2, old.export_partition(2))  # old key 0 is new key 0 here
        {0: 0}
        >>> old.drop_partition(2)  # the old owner learns none of its labels any more
        [0]
        >>> click = new.observe(Event("e2", 2_000, "click", "u1", "i1"), partition=2)
        >>> [(s.key, s.labels()) for s in click.resolved]
        [(0, (1.0, None, None))]
        >>> new.observe(Event("e1", 1_000, "impression", "u1", "i1"), partition=2).duplicate
        True
        """
        return self._partition_state(
            partition,
            self.resolver.export_partition(partition),
            self.resolver.partition_keys(partition),
        )

    def partition_changes(self, partition: int) -> dict[str, Any]:
        """What changed in ``partition``'s state since the previous call for it, as plain
        values, for the workers that keep it (:class:`~online_models.partition_log.PartitionLog`).

        ``resolver``: samples opened or changed (their rows, as :meth:`export_partition`
        writes them), samples gone (their keys), event ids remembered and forgotten, and
        the times and batch clicks whole (:meth:`LabelResolver.partition_changes`);
        ``waits``: the waits and assumed stages of the samples in ``resolver["open"]``
        (a waiting sample equal to its open one written short, under ``waiting_like``:
        :meth:`ProvisionalNegatives.export_keys`);
        ``held`` and ``held_reasons``: the labels held back by the balanced start from
        the ``held_from``-th of the partition on (0: all of them; before, the receiver's).
        The first call for a partition, and the first after :meth:`import_partition`,
        :meth:`drop_partition` or :meth:`load_state_dict`, is :meth:`export_partition`
        with ``"full": True``; the others carry ``"full": False``. Its cost is that of
        what changed: changes are noted as the state changes, open samples are not
        looked at. Call it between batches, like :meth:`export_partition`.

        >>> stage = LabelStage()
        >>> shown = stage.observe(Event("e1", 1_000, "impression", "u1", "i1"), partition=2)
        >>> _ = stage.labels(shown.new, shown.to_learn())
        >>> first = stage.partition_changes(2)
        >>> first["full"], len(first["resolver"]["open"]), len(first["waits"]["waiting"])
        (True, 1, 1)
        >>> again = stage.partition_changes(2)
        >>> again["full"], again["resolver"]["open"], again["waits"]
        (False, [], {'waiting': [], 'assumed': [], 'waiting_like': []})
        """
        self._noting = True
        self._note_waits()
        resolver = self.resolver.partition_changes(partition)
        if resolver.pop("full"):
            keys = self.resolver.partition_keys(partition)
            changes = {"full": True, **self._partition_state(partition, resolver, keys)}
            self._held_sent[partition] = len(changes["held"])
            return changes
        keys = [row[OPEN_ROW_KEY] for row in resolver["open"]]
        held_from = self._held_sent.get(partition, 0)
        changes = {
            "full": False,
            "held_from": held_from,
            **self._partition_state(
                partition, resolver, keys, self.resolver.open_sample, held_from
            ),
        }
        self._held_sent[partition] = held_from + len(changes["held"])
        return changes

    def _partition_state(
        self,
        partition: int,
        resolver: dict[str, Any],
        keys: list[int],
        like: Callable[[int], TrackedSample | None] | None = None,
        held_from: int = 0,
    ) -> dict[str, Any]:
        """The resolver's part of ``partition``, the waits of ``keys`` (short when ``like``
        their open samples: :meth:`ProvisionalNegatives.export_keys`) and its held labels
        from the ``held_from``-th on."""
        held = [i for i, p in enumerate(self._held_partitions) if p == partition][held_from:]
        return {
            "resolver": resolver,
            "waits": None if self.waits is None else self.waits.export_keys(keys, like),
            "held": [sample_to_row(self.held.samples[i]) for i in held],
            "held_reasons": self.held.reason_codes[held].tolist(),
        }

    def _note_waits(self) -> None:
        """Count samples whose waits changed as changed in their partitions."""
        if self.waits is not None:
            self.resolver.mark_changed(self.waits.changed_keys())

    def import_partition(self, partition: int, state: dict[str, Any]) -> dict[int, int]:
        """Replace what is held for ``partition`` with another stage's
        :meth:`export_partition`; labels of its samples then resolve here as they would
        have there.

        Keys number one stage's samples, so the samples taken over get new
        ones: returns each old key's new one (for state kept by key elsewhere).
        """
        self.drop_partition(partition)
        keys = _NewKeys(self.resolver)
        self.resolver.import_partition(partition, state["resolver"], keys)
        if self.waits is not None and state["waits"] is not None:
            self.waits.import_rows(state["waits"], keys)
        samples = [sample_from_row(row) for row in state["held"]]
        self.held = LabelBatch(
            self.held.samples + [replace(s, key=keys[s.key]) for s in samples],
            np.r_[self.held.reason_codes, np.array(state["held_reasons"], np.int8)],
        )
        self._held_partitions += [partition] * len(samples)
        return dict(keys)

    def drop_partition(self, partition: int) -> list[int]:
        """Forget ``partition`` (it moved to another worker): none of its pending labels is
        learned here; return their keys (as :meth:`forget_user` does)."""
        keys = set(self.resolver.drop_partition(partition))
        if self.waits is not None:
            keys.update(self.waits.forget_keys(keys))
        keys.update(self._release_held([p != partition for p in self._held_partitions]))
        return sorted(keys)

    def _holding(self) -> bool:
        """Whether labels may still be held back by the balanced start."""
        return (
            self.waits is not None
            and self.config.impressions
            and (self.learning_from is None or self.resolver.watermark < self.learning_from)
        )

    def _release_held(self, kept: list[bool]) -> set[int]:
        """Keep only the held samples ``kept`` says; return the keys of the others."""
        self._held_sent.clear()  # the next changes carry the held labels whole
        samples = self.held.samples
        self.held = LabelBatch(
            [s for s, keep in zip(samples, kept, strict=True) if keep],
            self.held.reason_codes[np.array(kept, dtype=bool)],
        )
        self._held_partitions = [
            p for p, keep in zip(self._held_partitions, kept, strict=True) if keep
        ]
        return {s.key for s, keep in zip(samples, kept, strict=True) if not keep}

    def _balanced(self, batch: LabelBatch, now: int) -> LabelBatch:
        """Hold labels back until the first click wait has passed (see the module docstring)."""
        if not self.config.impressions or now < 0:  # no event yet
            return batch
        if self.learning_from is None:
            self.learning_from = now + self.config.provisional_waits_ms[0]
        if now < self.learning_from:
            self.held.samples += batch.samples
            self.held.reason_codes = np.r_[self.held.reason_codes, batch.reason_codes]
            self._held_partitions += [self._partition_of(s.key) for s in batch.samples]
            return LabelBatch()
        if not self.held.samples:
            return batch
        held, self.held, self._held_partitions = self.held, LabelBatch(), []
        self._held_sent.clear()
        codes = np.r_[held.reason_codes, batch.reason_codes]
        return LabelBatch(held.samples + batch.samples, codes)

    def _partition_of(self, key: int) -> int:
        """The partition of a sample of this batch, or of one still open."""
        partition = self._batch_partitions.get(key)
        if partition is None:
            partition = self.resolver.partition_of(key)
        return UNKNOWN_PARTITION if partition is None else partition

    def state_dict(self) -> dict[str, Any]:
        """The resolver's and the waits' state, and the labels learned per reason."""
        return {
            "resolver": self.resolver.state_dict(),
            "waits": None if self.waits is None else self.waits.state_dict(),
            "learned": dict(self.learned),
            "learning_from": self.learning_from,
            "held": [sample_to_row(s) for s in self.held.samples],
            "held_reasons": self.held.reason_codes.tolist(),
            "held_partitions": self._held_partitions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same config assumed)."""
        self.resolver.load_state_dict(state["resolver"])
        if self.waits is not None and state.get("waits") is not None:
            self.waits.load_state_dict(state["waits"])
        self.learned = Counter(state.get("learned", {}))
        self.learning_from = state.get("learning_from", self.resolver.watermark)
        self.held = LabelBatch(
            [sample_from_row(row) for row in state.get("held", [])],
            np.array(state.get("held_reasons", []), np.int8),
        )
        self._held_partitions = state.get(
            "held_partitions", [UNKNOWN_PARTITION] * len(self.held.samples)
        )


class _NewKeys(dict[int, int]):
    """Another stage's keys to new keys of ``resolver``, each made when first asked for."""

    def __init__(self, resolver: LabelResolver) -> None:
        super().__init__()
        self._resolver = resolver

    def __missing__(self, key: int) -> int:
        new = self[key] = self._resolver.new_key()
        return new


def _labels(row: list[float]) -> tuple[float | None, ...]:
    """A label row (NaN where unknown) as sample labels (None where unknown)."""
    return tuple(None if value != value else value for value in row)
