"""ID tables: a cap, eviction of the least recently seen, expiry, fresh rows, counts."""

import numpy as np
import pytest
import torch

from online_models.tables import DecayedSums, IdTable, ScoringSnapshots, UserHistory


def test_every_id_gets_its_own_row_and_row_zero_means_unknown():
    table = IdTable("item", capacity=8)
    rows = table.rows(["a", "b", None, "a", "c"], now_ms=1)
    assert rows.tolist()[2] == 0
    assert rows[0] == rows[3]
    assert len({rows[0], rows[1], rows[4]}) == 3 and 0 not in (rows[0], rows[1], rows[4])
    assert table.rows(["zz"], now_ms=2, insert=False).tolist() == [0]
    assert len(table) == 3


def test_lookup_without_insert_changes_nothing():
    table = IdTable("item", capacity=8)
    table.rows(["a"], now_ms=5)
    before = table.last_seen.copy()
    table.rows(["a", "new"], now_ms=99, insert=False)
    assert len(table) == 1 and np.array_equal(table.last_seen, before)


def test_a_full_table_evicts_the_least_recently_seen_and_hands_its_row_over():
    table = IdTable("item", capacity=4)  # 3 usable rows, one evicted at a time
    table.rows(["old"], now_ms=1)
    mid_row = table.rows(["mid"], now_ms=2)[0]
    table.rows(["new"], now_ms=3)
    table.rows(["old"], now_ms=4)  # "mid" is now the least recently seen
    table.count([mid_row, mid_row])
    row = table.rows(["newest"], now_ms=5)[0]
    assert sorted(table.ids()) == ["new", "newest", "old"]
    assert row == mid_row
    assert table.take_released().tolist() == [row]  # for the owner to reinitialise
    assert table.take_released().size == 0  # reported once
    assert table.counts[row] == 0  # the new owner starts from zero interactions


def test_rows_used_by_the_same_lookup_are_never_evicted():
    table = IdTable("item", capacity=4, evict_fraction=1.0)
    table.rows(["a", "b", "c"], now_ms=1)
    rows = table.rows(["a", "x"], now_ms=1)  # full: must evict, but not "a"
    assert rows[0] == table.rows(["a"], now_ms=1, insert=False)[0] != 0
    assert rows[1] not in (0, rows[0])
    assert "a" in set(table.ids()) and "x" in set(table.ids())


def test_a_lookup_needing_more_rows_than_the_table_has_fails_loudly():
    table = IdTable("item", capacity=3)
    with pytest.raises(RuntimeError):
        table.rows(["a", "b", "c"], now_ms=1)


def test_expiry_releases_only_ids_idle_longer_than_the_limit():
    table = IdTable("user", capacity=8)
    table.rows(["stale"], now_ms=1_000)
    table.rows(["fresh"], now_ms=9_000)
    stale_row = table.rows(["stale"], now_ms=9_000, insert=False)[0]
    expired = table.expire(now_ms=10_000, max_idle_ms=5_000)
    assert expired.tolist() == [stale_row]
    assert sorted(table.ids()) == ["fresh"]
    assert table.rows(["stale"], now_ms=10_000, insert=False).tolist() == [0]


def test_memory_stays_bounded_over_many_distinct_ids():
    table = IdTable("item", capacity=1_000)
    rng = np.random.default_rng(0)
    for step in range(200):
        keys = [f"i{k}" for k in rng.integers(0, 50_000, 256)]
        rows = table.rows(keys, now_ms=step)
        assert rows.min() >= 1 and rows.max() < 1_000
        assert len(table) <= 999
    rows_of_ids = table.rows(list(table.ids()), now_ms=200, insert=False)
    assert len(set(rows_of_ids.tolist())) == len(table)  # collisionless: one row per id


def test_counts_follow_their_ids():
    table = IdTable("item", capacity=8)
    rows = table.rows(["a", "b"], now_ms=1)
    table.count([rows[0], rows[0], rows[1], 0])
    assert table.counts_of(["a", "b", "unknown"]).tolist() == [2, 1, 0]


def test_state_round_trip_keeps_rows_counts_and_the_next_free_row():
    table = IdTable("item", capacity=6)
    table.rows(["a", "b", "c", "d", "e"], now_ms=1)
    table.rows(["f"], now_ms=2)  # evicts
    table.count(table.rows(["f", "a"], now_ms=3))
    table.take_released()
    state = table.state_dict()
    assert all(torch.is_tensor(v) or isinstance(v, (int, str, list)) for v in state.values())
    restored = IdTable("item", capacity=6)
    restored.load_state_dict(state)
    keys = ["a", "b", "c", "d", "e", "f"]
    assert np.array_equal(
        restored.rows(keys, now_ms=3, insert=False), table.rows(keys, now_ms=3, insert=False)
    )
    assert np.array_equal(restored.counts, table.counts)
    assert restored.rows(["g", "h"], now_ms=4).tolist() == table.rows(["g", "h"], now_ms=4).tolist()


def test_history_is_a_ring_that_hides_entries_newer_than_the_sample():
    history = UserHistory(capacity=4, length=3, fields=2)
    for step in range(5):
        history.append(np.array([1]), np.array([[step + 1, 0]]), now_ms=10 * step)
    latest = history.gather(np.array([1]), before_ms=np.array([1_000]))[0, 0]
    assert sorted(latest.tolist()) == [3, 4, 5]  # the last three
    earlier = history.gather(np.array([1]), before_ms=np.array([35]))[0, 0]
    assert sorted(earlier.tolist()) == [0, 3, 4]  # entry 5 was added at 40
    history.clear(np.array([1]))
    assert history.gather(np.array([1]), np.array([1_000])).sum() == 0


def test_snapshots_are_bounded_and_forgotten_after_the_final_label():
    snapshots = ScoringSnapshots(capacity=2)
    not_final = np.array([False])

    def keep(key, value):
        history, dense = np.full((1, 1, 2), value, np.int32), np.full((1, 4), value, np.float32)
        snapshots.keep(np.array([key]), history=history, dense=dense, count=np.array([value]))

    for key in range(3):
        keep(key, key)
    assert len(snapshots) == 2 and not snapshots.take(np.array([0]), not_final)[0][0]  # oldest
    keep(1, 99)
    assert snapshots.take(np.array([1]), not_final)[1]["count"].tolist() == [1]  # first kept
    assert snapshots.take(np.array([1]), np.array([True]))[0][0]
    assert not snapshots.take(np.array([1]), not_final)[0][0]  # final label: forgotten
    restored = ScoringSnapshots(capacity=2)
    restored.load_state_dict(snapshots.state_dict())
    found, kept = restored.take(np.array([2, 5]), np.array([False, False]))
    assert found.tolist() == [True, False]
    assert kept["count"].tolist() == [2] and kept["dense"].tolist() == [[2.0] * 4]
    assert kept["history"].tolist() == [[[2, 2]]]


def test_decayed_sums_halve_every_half_life_and_forget_released_rows():
    stats = DecayedSums(capacity=4, columns=6, half_life=100)
    clicked = np.array([[1, 1, 0, 0, 0, 0]], dtype=float)
    stats.add(np.array([2]), clicked)
    for _ in range(100):
        stats.add(np.array([3]), clicked)
    assert stats.get(np.array([2]))[0, :2] == pytest.approx([0.5**1.01] * 2)  # 101 samples
    assert stats.get(np.array([3]))[0, 0] == pytest.approx(
        sum(0.5 ** (k / 100) for k in range(1, 101))
    )
    stats.clear(np.array([3]))
    assert stats.get(np.array([3])).sum() == 0
