"""Model updates between workers: chunking, reassembly, and which updates a state holds."""

from __future__ import annotations

import os

from streams.sync import Assembler, SyncState, Update


def _update(worker: str, seq: int, size: int = 10) -> Update:
    return Update(
        worker,
        seq,
        ts_ms=1_000 + seq,
        model=os.urandom(size),
        partitions={1: {"offset": 40 + seq, "applied": seq, "mark": [39 + seq, 7]}},
        users={"u1": [1, 2]},
    )


def test_an_update_larger_than_a_chunk_comes_back_whole_and_equal() -> None:
    update = _update("w1", 1, size=5_000)
    chunks = update.to_chunks(max_bytes=1_000)
    assert len(chunks) > 5
    assert all(len(c) < 1_200 for c in chunks)
    assembler = Assembler()
    results = [assembler.add(c) for c in chunks]
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert results[-1] == update


def test_chunks_of_two_workers_interleaved_both_assemble() -> None:
    first, second = _update("a", 1, 3_000), _update("b", 7, 3_000)
    a, b = first.to_chunks(1_000), second.to_chunks(1_000)
    assembler = Assembler()
    done = [u for pair in zip(a, b, strict=False) for c in pair if (u := assembler.add(c))]
    assert done == [first, second]


def test_an_update_cut_short_by_its_senders_death_is_never_applied() -> None:
    dead, next_one = _update("w", 3, 3_000), _update("w", 4, 100)
    assembler = Assembler()
    for chunk in dead.to_chunks(1_000)[:-1]:  # the last chunk never came
        assert assembler.add(chunk) is None
    assert [assembler.add(c) for c in next_one.to_chunks(1_000)] == [next_one]


def test_a_missing_middle_chunk_drops_the_update() -> None:
    chunks = _update("w", 1, 3_000).to_chunks(1_000)
    assembler = Assembler()
    assert [assembler.add(c) for c in chunks[:1] + chunks[2:]] == [None] * (len(chunks) - 1)


def test_chunks_of_an_update_the_state_holds_are_passed_over() -> None:
    held, later = _update("w", 2, 3_000), _update("w", 3, 3_000)
    state = SyncState()
    state.record(held)
    assembler = Assembler(state)
    assert all(assembler.add(c) is None for c in held.to_chunks(1_000))
    assert [assembler.add(c) for c in later.to_chunks(1_000)][-1] == later


def test_the_state_holds_each_workers_updates_up_to_its_last_seq_and_survives_a_checkpoint() -> (
    None
):
    state = SyncState()
    state.record(_update("a", 2))
    assert state.holds(_update("a", 1)) and state.holds(_update("a", 2))
    assert not state.holds(_update("a", 3)) and not state.holds(_update("b", 1))
    assert state.partitions[1] == {
        "offset": 42,
        "applied": 2,
        "mark": [41, 7],
        "worker": "a",
        "seq": 2,
    }
    state.position = 17
    restored = SyncState.from_state(state.state_dict())
    assert restored.state_dict() == state.state_dict()
    assert (restored.vector, restored.position) == ({"a": 2}, 17)
