"""Checkpoints are atomic, restore the newest valid state, and never execute what they load."""

from __future__ import annotations

import os
import pickle
import shlex

import numpy as np
import pytest
import torch

from streams.checkpoint import WRITER_NICE, CheckpointError, CheckpointStore, save_in_child


class Boom:
    """An object whose unpickling would run code: a shell command creating ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_the_newest_checkpoint_is_restored_with_its_offsets(tmp_path):
    store = CheckpointStore(tmp_path, owner="events")
    store.save({"n": 1, "weights": torch.ones(3)}, {0: 5})
    store.save({"n": 2, "weights": torch.zeros(3)}, {0: 9, 1: 2})
    found, refused = store.load_latest()
    assert refused == []
    assert found.state["n"] == 2 and found.offsets == {0: 9, 1: 2}
    assert torch.equal(found.state["weights"], torch.zeros(3))


def test_only_the_newest_few_are_kept(tmp_path):
    store = CheckpointStore(tmp_path, owner="events", keep=2)
    for n in range(5):
        store.save({"n": n}, {})
    assert len(list(tmp_path.glob("checkpoint-*.pt"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_corrupt_newest_checkpoint_is_refused_and_the_previous_one_used(tmp_path):
    store = CheckpointStore(tmp_path, owner="events")
    store.save({"n": 1}, {0: 3})
    newest = store.save({"n": 2}, {0: 7})
    newest.write_bytes(newest.read_bytes()[:100])  # a torn write
    found, refused = store.load_latest()
    assert found.state["n"] == 1
    assert len(refused) == 1 and newest.name in refused[0] and "unreadable" in refused[0]


def test_a_pickle_that_would_run_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"format": Boom(marker)})
    store = CheckpointStore(tmp_path, owner="events")
    (tmp_path / "checkpoint-000000001.pt").write_bytes(payload)
    found, refused = store.load_latest()
    assert found is None
    assert "unsafe" in refused[0]
    assert not marker.exists()
    pickle.loads(payload)  # what a plain unpickler would have done
    assert marker.exists()


def test_a_foreign_file_or_another_workers_checkpoint_is_refused(tmp_path):
    torch.save({"some": "model"}, tmp_path / "checkpoint-000000001.pt")
    CheckpointStore(tmp_path / "other", owner="shop2.events").save({}, {})
    store = CheckpointStore(tmp_path, owner="events")
    found, refused = store.load_latest()
    assert found is None and "not a recstream checkpoint" in refused[0]
    other = CheckpointStore(tmp_path / "other", owner="events")
    try:
        other.load(next((tmp_path / "other").glob("*.pt")))
    except CheckpointError as err:
        assert "written for input 'shop2.events'" in str(err)
    else:
        raise AssertionError("a foreign checkpoint was accepted")


def test_mostly_empty_tables_are_saved_as_their_rows_and_come_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    sparse_table = torch.zeros(1 << 17, 8)
    sparse_table[rng.choice(1 << 17, 300, replace=False)] = torch.randn(300, 8)
    counts = np.zeros((1 << 17, 3), dtype=np.int32)
    counts[5] = (1, 2, 3)
    dense = torch.randn(1 << 15, 4)
    state = {"table": sparse_table, "counts": counts, "dense": dense, "small": torch.zeros(5)}
    store = CheckpointStore(tmp_path, owner="events")
    path = store.save(state, {0: 1})
    restored = store.load(path).state
    assert torch.equal(restored["table"], sparse_table)
    assert np.array_equal(restored["counts"], counts) and restored["counts"].dtype == np.int32
    assert torch.equal(restored["dense"], dense) and torch.equal(restored["small"], torch.zeros(5))
    full = sparse_table.numel() * 4 + counts.nbytes
    assert path.stat().st_size < full / 10 + dense.numel() * 4 * 1.1


def test_a_background_save_runs_at_low_priority_and_leaves_the_worker_as_it_was(tmp_path):
    store = CheckpointStore(tmp_path, owner="events")
    policy_before, nice_before = os.sched_getscheduler(0), os.nice(0)

    def state() -> dict:  # runs in the forked child
        return {"policy": os.sched_getscheduler(0), "nice": os.nice(0)}

    save_in_child(store, state, {0: 3}).wait()
    found, refused = store.load_latest()
    assert refused == [] and found.offsets == {0: 3}
    assert found.state["policy"] == os.SCHED_BATCH  # not SCHED_IDLE: never starved
    assert found.state["nice"] == min(19, nice_before + WRITER_NICE)
    assert (os.sched_getscheduler(0), os.nice(0)) == (policy_before, nice_before)


def test_workers_of_two_inputs_sharing_a_directory_keep_each_others_checkpoints(tmp_path):
    shop1, shop2 = (CheckpointStore(tmp_path, owner=o, keep=2) for o in ("s1.events", "s2.events"))
    for n in range(4):
        shop1.save({"n": n}, {0: n})
        shop2.save({"n": 10 + n}, {0: 10 + n})
    assert shop1.load_latest()[0].offsets == {0: 3}
    assert shop2.load_latest()[0].offsets == {0: 13}
    assert len(list(tmp_path.glob("checkpoint-s1.events-*.pt"))) == 2
    assert len(list(tmp_path.glob("checkpoint-s2.events-*.pt"))) == 2


def test_a_stuck_background_writer_is_killed_after_its_timeout(tmp_path):
    import time

    store = CheckpointStore(tmp_path, owner="events")
    child = save_in_child(store, lambda: time.sleep(60) or {}, {0: 1})
    with pytest.raises(CheckpointError, match="stuck"):
        child.wait(timeout_s=0.5)
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)  # reaped: no child left behind
    assert store.load_latest() == (None, [])
