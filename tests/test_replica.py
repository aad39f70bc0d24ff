"""Replicas: workers learning one model from different users converge by exchanging deltas."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from online_models.base import Sample
from online_models.config import MultiTaskConfig
from online_models.learner import MultiTaskLearner
from online_models.replica import ModelDelta, Replica
from online_models.synthetic import ToyShop

CONFIG = replace(MultiTaskConfig().with_capacity(4096), max_batch_size=256)
SHARED_TABLES = {"item": "item", "token": "category", "brand": "brand", "device": None}


def split_by_user(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """Samples of even users, of odd users (so each user is learned by one worker)."""
    even = [s for s in samples if int(s.user_id[1:]) % 2 == 0]
    odd = [s for s in samples if int(s.user_id[1:]) % 2 == 1]
    return even, odd


def exchange(a: Replica, b: Replica, weight: float = 1.0) -> tuple[ModelDelta, ModelDelta]:
    """One round: both take, each applies the other's (through bytes, as on the wire)."""
    sent_a, sent_b = a.take(weight), b.take(weight)
    a.apply(ModelDelta.from_bytes(sent_b.to_bytes()))
    b.apply(ModelDelta.from_bytes(sent_a.to_bytes()))
    return sent_a, sent_b


def row_state(learner: MultiTaskLearner, table: str, key: str) -> torch.Tensor:
    """Everything a worker holds for one id of a shared table, as one vector."""
    encoder, net = learner.encoder, learner.net
    row = encoder.tables[table].row(key)
    assert row, f"{table} {key!r} missing"
    module, start, _ = net.sections[table]
    embedding = net.get_submodule(module)
    parts = [embedding.weight[start + row], embedding.squared_gradients[start + row]]
    numbers = [encoder.tables[table].counts[row], encoder.tables[table].interactions[row]]
    stats = SHARED_TABLES[table]
    if stats is not None:
        numbers += encoder.stats[stats].get(np.array([row]))[0].tolist()
    if table == "token":
        numbers += encoder.category_prices.get(np.array([row]))[0].tolist()
    return torch.cat([*parts, torch.tensor(numbers, dtype=torch.float32)])


def user_state(learner: MultiTaskLearner, user_id: str) -> tuple[torch.Tensor, list]:
    """A user's embedding row, counts and statistics, and its history as ids."""
    encoder, net = learner.encoder, learner.net
    row = encoder.tables["user"].row(user_id)
    assert row, f"user {user_id!r} missing"
    _, start, _ = net.sections["user"]
    numbers = [encoder.tables["user"].counts[row], encoder.history.appended[row]]
    numbers += encoder.stats["user"].get(np.array([row]))[0].tolist()
    vector = torch.cat([net.ids.weight[start + row], torch.tensor(numbers, dtype=torch.float32)])
    entries = encoder.history.entries[row]
    history = [
        encoder.tables[table].keys_of(entries[column])
        for column, table in ((0, "item"), (1, "token"), (3, "brand"))
    ]
    return vector, [*history, entries[4].tolist(), encoder.history.added_ms[row].tolist()]


def assert_consistent(a: MultiTaskLearner, b: MultiTaskLearner, probe: list[Sample]) -> None:
    """Same dense parameters, same state for every id both hold, same predictions."""
    for pa, pb in zip(a.net.parameters(), b.net.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5)
    for table in SHARED_TABLES:
        shared = set(a.encoder.tables[table].ids()) & set(b.encoder.tables[table].ids())
        assert shared or table == "device"
        for key in shared:
            assert torch.allclose(row_state(a, table, key), row_state(b, table, key), atol=1e-5), (
                table,
                key,
            )
    assert np.allclose(a.encoder.shop_rates(), b.encoder.shop_rates())
    assert np.allclose(a.predict(probe), b.predict(probe), atol=1e-5)


def probe_of(samples: list[Sample]) -> list[Sample]:
    """The samples' pairs, unlabelled, scored after everything learned."""
    last = max(s.ts for s in samples) + 1
    return [replace(s, ts=last, click=None, cart=None, purchase=None) for s in samples]


@pytest.fixture
def stream() -> list[Sample]:
    samples, _ = ToyShop(seed=3, users=60, items=150).stream(2400)
    return samples


def test_two_workers_hold_the_same_model_after_an_exchange(stream):
    a, b = Replica(MultiTaskLearner(CONFIG)), Replica(MultiTaskLearner(CONFIG))
    mine, theirs = split_by_user(stream[:1200])
    a.learner.learn(mine)
    b.learner.learn(theirs)
    items_a = {s.item_id for s in mine}
    assert items_a & {s.item_id for s in theirs}  # the workers share items
    exchange(a, b)
    assert_consistent(a.learner, b.learner, probe_of(stream[:1200]))
    user = mine[0].user_id  # learned by a alone: b holds a's state of it
    assert b.learner.encoder.tables["user"].row(user)
    vector_a, history_a = user_state(a.learner, user)
    vector_b, history_b = user_state(b.learner, user)
    assert torch.allclose(vector_a, vector_b) and history_a == history_b
    theirs_only = [s for s in probe_of(mine) if s.user_id == user]
    assert np.allclose(a.learner.predict(theirs_only), b.learner.predict(theirs_only), atol=1e-5)


def test_rounds_stay_consistent_and_nothing_applied_is_sent_back(stream):
    a, b = Replica(MultiTaskLearner(CONFIG)), Replica(MultiTaskLearner(CONFIG))
    for start in range(0, 2400, 600):
        mine, theirs = split_by_user(stream[start : start + 600])
        a.learner.learn(mine)
        b.learner.learn(theirs)
        exchange(a, b)
        assert_consistent(a.learner, b.learner, probe_of(stream[: start + 600]))
        for replica in (a, b):
            again = ModelDelta.from_bytes(replica.take().to_bytes())
            assert (again.steps, again.size) == (0, 0) and "dense" not in again.arrays


def flat(learner: MultiTaskLearner) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in learner.net.parameters()])


def test_workers_with_half_the_stream_each_average_their_dense_steps(stream):
    """Weight 1/2 each: the shared layers move by the mean of the two workers' changes; the
    demand head, which one worker learns, by the sum."""
    a, b = Replica(MultiTaskLearner(CONFIG)), Replica(MultiTaskLearner(CONFIG))
    b.learner.net.load_state_dict(a.learner.net.state_dict())
    b.rebase()
    base = flat(a.learner)
    mine, theirs = split_by_user(stream[:1200])
    a.learner.learn(mine)
    b.learner.learn(theirs)
    with torch.no_grad():  # a demand step on a alone
        for parameter in a.learner.net.demand.parameters():
            parameter += 0.01
    change_a, change_b = flat(a.learner) - base, flat(b.learner) - base
    demand = {id(p) for p in a.learner.net.demand.parameters()}
    summed = torch.cat(
        [torch.full((p.numel(),), id(p) in demand) for p in a.learner.net.parameters()]
    )
    assert summed.any() and change_b[summed].abs().sum() == 0 and change_b.abs().sum() > 0
    exchange(a, b, weight=0.5)
    assert_consistent(a.learner, b.learner, probe_of(stream[:1200]))
    expected = torch.where(summed, base + change_a + change_b, base + (change_a + change_b) / 2)
    assert torch.allclose(flat(a.learner), expected, atol=1e-6)


def test_model_version_counts_the_steps_of_every_worker(stream):
    a, b = Replica(MultiTaskLearner(CONFIG)), Replica(MultiTaskLearner(CONFIG))
    mine, theirs = split_by_user(stream[:1200])
    a.learner.learn(mine)
    b.learner.learn(theirs)
    steps = a.learner.model_version + b.learner.model_version
    sent_a, sent_b = exchange(a, b)
    assert (sent_a.steps, sent_b.steps) == (a.learner.model_version - sent_b.steps, sent_b.steps)
    assert a.learner.model_version == b.learner.model_version == steps


def rows_bytes(delta: ModelDelta) -> int:
    """Bytes of a delta without its dense part (a fixed size: every parameter of the net)."""
    return len(
        replace(delta, arrays={k: v for k, v in delta.arrays.items() if k != "dense"}).to_bytes()
    )


def test_a_delta_comes_back_from_its_bytes_exactly_mostly_zero_arrays_included():
    rng = np.random.default_rng(0)
    sparse = np.zeros((50, 7), np.float32)
    sparse[rng.integers(0, 50, 9), rng.integers(0, 7, 9)] = rng.normal(size=9)
    arrays = {
        "item.emb": sparse,
        "dense": rng.normal(size=300).astype(np.float32),
        "item.stats": np.where(rng.random((50, 6)) < 0.8, 0.0, rng.random((50, 6))),
        "user.history": rng.integers(0, 3, (4, 5, 16)).astype(np.int32),
        "item.rows": np.zeros(0, np.int64),
        "item.fresh": rng.random(50) < 0.1,
    }
    delta = ModelDelta(3, {"item": ["a", "b"]}, {"item": 2}, arrays)
    back = ModelDelta.from_bytes(delta.to_bytes())
    assert (back.steps, back.ids, back.rows) == (3, {"item": ["a", "b"]}, {"item": 2})
    assert back.arrays.keys() == arrays.keys()
    for name, array in arrays.items():
        assert back.arrays[name].dtype == array.dtype and back.arrays[name].shape == array.shape
        assert np.array_equal(back.arrays[name], array), name
    assert len(delta.to_bytes()) < sum(a.nbytes for a in arrays.values())


def test_a_delta_grows_with_rows_changed_not_with_rows_held(stream):
    busy, fresh = Replica(MultiTaskLearner(CONFIG)), Replica(MultiTaskLearner(CONFIG))
    many, _ = ToyShop(seed=5, users=1000, items=1000, arrival_span=1).stream(5000)
    busy.learner.learn(
        [replace(s, user_id=f"old{s.user_id}", item_id=f"old{s.item_id}") for s in many]
    )
    busy.take()
    assert min(busy.learner.table_stats()[t] for t in ("user", "item")) > 900
    small = stream[:40]
    deltas = []
    for replica in (busy, fresh):
        replica.learner.learn(small)
        deltas.append(replica.take())
    assert deltas[0].size == deltas[1].size
    sizes = [rows_bytes(delta) for delta in deltas]
    assert 0.7 < sizes[0] / sizes[1] < 1.4
    wide, _ = ToyShop(seed=7, users=500, items=1000, arrival_span=1).stream(2000)
    fresh.learner.learn(wide)
    more = fresh.take()
    assert more.size > 5 * deltas[1].size and rows_bytes(more) > 5 * max(sizes)


def test_ids_are_matched_across_different_row_numbers(stream):
    a, b = Replica(MultiTaskLearner(CONFIG)), Replica(MultiTaskLearner(CONFIG))
    mine, theirs = split_by_user(stream[:1200])
    a.learner.learn(mine)
    b.learner.learn(theirs[::-1])  # b meets the shared items in another order
    exchange(a, b)
    later_a, later_b = split_by_user(stream[1200:])
    a.learner.learn(later_a)
    b.learner.learn(later_b)
    exchange(a, b)
    for table in ("item", "token", "brand"):  # tokens and brands start at random, per row
        rows_a, rows_b = (r.learner.encoder.tables[table] for r in (a, b))
        shared = set(rows_a.ids()) & set(rows_b.ids())
        assert sum(rows_a.row(key) != rows_b.row(key) for key in shared) > len(shared) / 2
    assert_consistent(a.learner, b.learner, probe_of(stream))


def test_three_workers_in_rounds_hold_one_model(stream):
    workers = [Replica(MultiTaskLearner(CONFIG)) for _ in range(3)]
    for start in range(0, 2400, 800):
        for k, worker in enumerate(workers):
            worker.learner.learn(
                [s for s in stream[start : start + 800] if int(s.user_id[1:]) % 3 == k]
            )
        sent = [ModelDelta.from_bytes(worker.take().to_bytes()) for worker in workers]
        for k, worker in enumerate(workers):
            for j, delta in enumerate(sent):
                if j != k:
                    worker.apply(delta)
    probe = probe_of(stream)
    assert_consistent(workers[0].learner, workers[1].learner, probe)
    assert_consistent(workers[0].learner, workers[2].learner, probe)
    assert len({worker.learner.model_version for worker in workers}) == 1


def test_an_erased_user_is_not_sent():
    a, b = Replica(MultiTaskLearner(CONFIG)), Replica(MultiTaskLearner(CONFIG))
    a.learner.learn([Sample("gone", "i1", ts=1, click=1.0), Sample("kept", "i1", ts=1, click=0.0)])
    a.learner.forget_user("gone")
    sent = a.take()
    assert sent.ids["user"] == ["kept"]
    b.apply(sent)
    assert set(b.learner.users()) == {"kept"}
