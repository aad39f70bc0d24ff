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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from online_models.catalog import Catalog
from online_models.feedback import ProvisionalNegatives
from online_models.labels import (
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

    def observe(self, event: Event, partition: int = 0) -> Resolution:
        """Apply one event (see :meth:`LabelResolver.observe`)."""
        return self.resolver.observe(event, partition)

    def close_batch(self) -> list[TrackedSample]:
        """Without impressions, the batch's clicks and their in-batch negatives, new samples
        with their labels (:meth:`LabelResolver.close_batch`): score and learn them with the
        batch's other samples. Call it after the batch's last event."""
        return self.resolver.close_batch()

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
        self.learned.update(out.counts())
        return out

    def forget_user(self, user_id: str) -> list[int]:
        """Drop the user's pending labels (open, waiting, held back); return their keys."""
        keys = set(self.resolver.forget_user(user_id))
        if self.waits is not None:
            keys.update(self.waits.forget_user(user_id))
        kept = [s.user_id != user_id for s in self.held.samples]
        keys.update(s.key for s, keep in zip(self.held.samples, kept, strict=True) if not keep)
        self.held = LabelBatch(
            [s for s, keep in zip(self.held.samples, kept, strict=True) if keep],
            self.held.reason_codes[np.array(kept, dtype=bool)],
        )
        return sorted(keys)

    def _balanced(self, batch: LabelBatch, now: int) -> LabelBatch:
        """Hold labels back until the first click wait has passed (see the module docstring)."""
        if not self.config.impressions or now < 0:  # no event yet
            return batch
        if self.learning_from is None:
            self.learning_from = now + self.config.provisional_waits_ms[0]
        if now < self.learning_from:
            self.held.samples += batch.samples
            self.held.reason_codes = np.r_[self.held.reason_codes, batch.reason_codes]
            return LabelBatch()
        if not self.held.samples:
            return batch
        held, self.held = self.held, LabelBatch()
        codes = np.r_[held.reason_codes, batch.reason_codes]
        return LabelBatch(held.samples + batch.samples, codes)

    def state_dict(self) -> dict[str, Any]:
        """The resolver's and the waits' state, and the labels learned per reason."""
        return {
            "resolver": self.resolver.state_dict(),
            "waits": None if self.waits is None else self.waits.state_dict(),
            "learned": dict(self.learned),
            "learning_from": self.learning_from,
            "held": [sample_to_row(s) for s in self.held.samples],
            "held_reasons": self.held.reason_codes.tolist(),
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


def _labels(row: list[float]) -> tuple[float | None, ...]:
    """A label row (NaN where unknown) as sample labels (None where unknown)."""
    return tuple(None if value != value else value for value in row)
