"""Live quality: a window in scoring order, shown only once it rests on enough labels."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.labels import TrackedSample
from online_models.live_quality import LiveQuality


def shown(keys: range) -> list[TrackedSample]:
    return [TrackedSample("u", f"i{k}", 0, key=k) for k in keys]


def clicks(keys, click: float) -> list[TrackedSample]:
    zero = None if click else 0.0
    return [
        TrackedSample("u", f"i{k}", 0, key=k, click=click, cart=zero, purchase=zero) for k in keys
    ]


def test_positives_that_resolve_first_wait_for_the_negatives_scored_beside_them():
    """An old model scored 0..99 (high for everything), a newer one 100..199 (it ranks well).

    Clicks resolve at once, negatives when the click window closes: ordered by arrival,
    the window would compare the new model's positives with the old model's negatives
    (AUC 0.25 after the third update).
    """
    quality = LiveQuality(window=100, min_class_labels=5)
    old = np.full((100, 3), 0.9)
    new = np.where((np.arange(100) % 10 == 0)[:, None], 0.6, 0.1) * np.ones((1, 3))
    quality.scored(shown(range(100)), old, model_version=1)
    quality.labelled(clicks(range(0, 100, 10), 1.0), position=1)
    quality.scored(shown(range(100, 200)), new, model_version=2)
    quality.labelled(clicks(range(100, 200, 10), 1.0), position=2)
    quality.labelled(clicks([k for k in range(100) if k % 10], 0.0), position=3)
    first = quality.summary()["click"]
    assert first["positives"] == 10  # 0-90 and key 100 (0 left the window); 110-190 wait
    quality.labelled(clicks([k for k in range(100, 200) if k % 10], 0.0), position=4)
    both = quality.summary()["click"]
    assert both["labels"] == 100 and both["auc"] == 1.0  # the newest 100 scored: the new model


def test_a_task_is_shown_only_once_it_has_enough_of_both_classes():
    quality = LiveQuality(min_class_labels=10)
    quality.scored(shown(range(30)), np.tile([0.5, 0.1, 0.1], (30, 1)), model_version=1)
    quality.labelled(clicks(range(8), 1.0), position=1)
    quality.labelled(clicks(range(8, 30), 0.0), position=2)
    click = quality.summary()["click"]
    assert np.isnan(click["auc"]) and np.isnan(click["logloss"]) and not click["warm"]
    assert quality.warm_up("click") == (18, 20)
    quality.scored(shown(range(30, 32)), np.tile([0.9, 0.1, 0.1], (2, 1)), model_version=1)
    quality.labelled(clicks(range(30, 32), 1.0), position=3)
    assert quality.summary()["click"]["warm"] and quality.warm_up("click") == (20, 20)
    assert quality.summary()["click"]["auc"] > 0.5


def test_an_untrained_models_guesses_are_not_measured():
    quality = LiveQuality(min_class_labels=1)
    quality.scored(shown(range(4)), np.full((4, 3), 0.5), model_version=0)
    quality.labelled(clicks([0, 1], 1.0) + clicks([2, 3], 0.0), position=1)
    assert quality.summary()["click"]["labels"] == 0


def test_pairs_held_back_survive_a_checkpoint():
    quality = LiveQuality(min_class_labels=1)
    quality.scored(
        shown(range(4)), np.array([[0.9, 0, 0], [0.1, 0, 0], [0.8, 0, 0], [0.2, 0, 0]]), 1
    )
    quality.labelled(clicks([0, 2], 1.0), position=1)  # 0 is in the window; 2 waits for 1
    restored = LiveQuality(min_class_labels=1)
    restored.load_state_dict(quality.state_dict())
    restored.labelled(clicks([1, 3], 0.0), position=2)
    click = restored.summary()["click"]
    assert click["labels"] == 4 and click["auc"] == 1.0


def test_a_checkpoint_from_before_the_horizons_still_loads():
    quality = LiveQuality(min_class_labels=1)
    quality.scored(shown(range(2)), np.array([[0.9, 0, 0], [0.1, 0, 0]]), model_version=1)
    state = quality.state_dict()
    del state["waiting"]
    restored = LiveQuality(min_class_labels=1)
    restored.load_state_dict(state)
    restored.labelled(clicks([0], 1.0) + clicks([1], 0.0), position=1)
    assert restored.summary()["click"]["auc"] == 1.0


def test_sampled_pairs_are_measured_on_the_task_they_were_sampled_for():
    """A ranking score of 0.5 for a pair drawn with k Q = 4 is a 0.2 chance of being the click."""
    quality = LiveQuality(min_class_labels=1)
    drawn = [TrackedSample("u", f"i{k}", 0, key=k, logit_offset=-np.log(4.0)) for k in range(5)]
    quality.scored(drawn, np.tile([0.5, 0.25, 0.1], (5, 1)), model_version=1)
    quality.labelled(clicks([0], 1.0) + clicks(range(1, 5), 0.0), position=1)
    click = quality.summary()["click"]
    assert click["mean_prediction"] == pytest.approx(0.2) and click["label_rate"] == 0.2
