"""Feature encoding: deterministic, point-in-time, content kept for unseen items."""

from dataclasses import replace

import numpy as np
import torch

from online_models.base import Sample
from online_models.content import path_tokens, price_buckets
from online_models.features import FeatureEncoder
from online_models.labels import TrackedSample
from online_models.layout import DENSE_FEATURES, PATH_TOKENS, TableCapacities, label_matrix
from online_models.synthetic import ToyShop

SMALL = TableCapacities(user=4096, item=4096, token=1024, brand=1024, device=16)


def dense(batch, name):
    return batch.dense[:, DENSE_FEATURES.index(name)]


def test_category_path_becomes_the_full_path_and_its_prefixes():
    assert path_tokens("electronics.phone") == ("electronics.phone", "electronics", None, None)
    assert path_tokens("a.b.c.d.e") == ("a.b.c.d.e", "a", "a.b", "a.b.c")
    assert len(path_tokens("books")) == PATH_TOKENS
    assert path_tokens("") == path_tokens(None) == (None,) * PATH_TOKENS


def test_price_buckets_are_log_scaled_and_a_missing_price_has_its_own():
    buckets = price_buckets([None, 0.0, 1.0, 3.0, 10.0, 100.0, 1_000.0, 1e12])
    assert buckets[0] == 1 and 1 not in buckets[1:]
    assert np.all(np.diff(buckets[1:]) > 0)
    assert price_buckets([100.0])[0] == price_buckets([110.0])[0]  # close prices share a bucket


def test_encoding_is_deterministic():
    samples, _ = ToyShop(seed=3).stream(2_000)
    batches = []
    for _ in range(2):
        encoder = FeatureEncoder(SMALL)
        for start in range(0, 1_500, 500):
            chunk = samples[start : start + 500]
            encoder.record(encoder.encode(chunk, learning=True), label_matrix(chunk))
        batches.append(encoder.encode(samples[1_500:], learning=False))
    for field in ("user", "item", "content", "user_state", "history", "dense"):
        assert torch.equal(getattr(batches[0], field), getattr(batches[1], field)), field


def test_an_unseen_item_is_row_zero_with_its_content_encoded():
    encoder = FeatureEncoder(SMALL)
    known = Sample("u1", "i1", ts=1, category="toys.games", brand="acme", price=20.0, click=0.0)
    encoder.record(encoder.encode([known], learning=True), label_matrix([known]))
    new = replace(known, item_id="brand-new", ts=2)
    batch = encoder.encode([new], learning=False)
    assert batch.item.tolist() == [0] and batch.item_interactions.tolist() == [0.0]
    same = encoder.encode([known], learning=False)
    assert torch.equal(batch.content, same.content)  # tokens, brand, price bucket, device
    assert len(encoder.tables["item"]) == 1  # scoring inserted nothing


def test_a_click_enters_the_history_only_for_samples_after_it():
    encoder = FeatureEncoder(SMALL)
    click = Sample("u1", "i1", ts=100, category="toys.games", brand="acme", price=5.0, click=1.0)
    encoder.record(encoder.encode([click], learning=True), label_matrix([click]))
    same_time = replace(click, item_id="i2", click=None)
    later = replace(click, item_id="i3", ts=101, click=None)
    batch = encoder.encode([same_time, later], learning=False)
    assert dense(batch, "history_fill").tolist() == [0.0, 1 / 16]
    assert dense(batch, "history_same_category")[1] == 1.0
    clicked_row = encoder.tables["item"].rows(["i1"], now_ms=101, insert=False)[0]
    history = batch.history[batch.user_state]  # per sample: (field, slot)
    assert history[0].sum() == 0
    assert clicked_row in history[1, 0].tolist()


def test_a_cart_makes_its_item_the_users_latest_again_and_weigh_more():
    encoder = FeatureEncoder(SMALL)
    first = Sample("u1", "carted", ts=100, category="toys.games", price=5.0, click=1.0)
    other = replace(first, item_id="glanced", ts=101)
    for sample in (first, other, replace(first, ts=102, click=None, cart=1.0)):
        encoder.record(encoder.encode([sample], learning=True), label_matrix([sample]))
    ask = [replace(first, ts=200, click=None), replace(other, ts=200, click=None)]
    batch = encoder.encode(ask, learning=False)
    carted, glanced = dense(batch, "history_last_item").tolist()
    assert carted == 1.0 and glanced < carted  # 1 / (1 + entries since)
    shares = dense(batch, "history_same_item").tolist()
    assert shares[0] > shares[1] > 0


def test_a_delayed_label_is_learned_with_the_features_it_was_scored_with():
    encoder = FeatureEncoder(SMALL)
    shown = TrackedSample("u1", "i9", ts=100, category="toys.games", price=5.0, key=7)
    scored = encoder.encode([shown], learning=False, keep=True)
    later_clicks = [
        Sample("u1", f"i{k}", ts=90 + k, category="toys.games", click=1.0) for k in range(1, 6)
    ]
    for click in later_clicks:
        encoder.record(encoder.encode([click], learning=True), label_matrix([click]))
    resolved = replace(shown, ts=100, click=0.0, cart=0.0, purchase=0.0)
    as_learned = encoder.encode([resolved], learning=True)
    assert torch.equal(as_learned.dense, scored.dense)
    assert torch.equal(as_learned.history, scored.history)
    assert len(encoder.snapshots) == 0  # final label: the snapshot is gone


def test_samples_seeing_the_same_user_state_share_it():
    encoder = FeatureEncoder(SMALL)
    click = Sample("u1", "i1", ts=100, category="toys.games", brand="acme", price=5.0, click=1.0)
    encoder.record(encoder.encode([click], learning=True), label_matrix([click]))
    slate = [
        Sample("u1", "i2", ts=101),
        Sample("u1", "i3", ts=101, category="books"),
        Sample("u1", "i4", ts=100),  # before the click entered the history
        Sample("u2", "i5", ts=101),
    ]
    state = encoder.encode(slate, learning=False).user_state.tolist()
    assert state[0] == state[1] and len(set(state)) == 3
