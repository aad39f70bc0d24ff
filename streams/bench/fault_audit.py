"""Exactly-once, checked per offset: what a topic holds against what the worker applied.

After a fault run the ``events`` topic is read back (not the producer's
counts: a producer retry can put a message there twice), and each message
is classified the way the worker must treat it:

- **to apply**: a valid event, not a repeat of an earlier ``event_id``;
- **to dead-letter**: invalid by the contract (its reason), or a repeat
  when the whole topic holds no more valid events than the worker's
  deduplication window (then every repeat is within the window, whatever
  order the worker read the partitions in);
- **either**: a repeat with a shorter window: deduplication remembers the
  last N events *applied*, across partitions, so whether it catches a repeat
  depends on how the partitions were interleaved (after a restart, one
  partition's backlog can come whole before another's). Applied once, or
  dead-lettered, or both (a crash can repeat its batch in another
  interleaving after its dead letter was sent: the letter then belongs to a
  lineage that did not survive), but not neither.

A repeat is taken to be in the partition of its original (the same key),
as a producer retry or a replayed log puts it.

It is then compared with the applied-offsets ledger of the final checkpoint
(:mod:`streams.ledger`) and with the dead letters read back from
``events.dlq``, matched by the (partition, offset) of the message they carry
and its raw text (a letter about a message of an erased log is *stale*, not
evidence for the new one). The result is one :class:`Audit`: lost and
applied-twice offsets, dead letters expected, received (distinct) and
duplicated, and what went where it should not.

Example
-------
>>> from streams.ledger import ApplyLedger
>>> ok = b'{"event_id":"e1","ts":1000000000000,"type":"click","user_id":"u","item_id":"i"}'
>>> bad = b"{x"
>>> topic = [TopicMessage(0, 0, ok), TopicMessage(0, 1, bad), TopicMessage(0, 2, ok)]
>>> ledger = ApplyLedger()
>>> ledger.applied(0, 0)
>>> letters = [dead_letter(0, 1, b"{x", "not_json"), dead_letter(0, 2, ok, "duplicate")] * 2
>>> audit = audit_run(topic, {0: ledger.counts(0)}, letters, now_ms=10**13, dedupe_window=100)
>>> (audit.applied, audit.lost, audit.applied_twice, audit.dead_letters_expected,
...  audit.dead_letters_received, audit.dead_letters_duplicated, audit.ok)
(1, 0, 0, 2, 2, 2, True)
>>> ledger.applied(0, 0)                    # a second application of offset 0
>>> audit_run(topic, {0: ledger.counts(0)}, letters, now_ms=10**13, dedupe_window=100).applied_twice
1
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from producers.contract import InvalidRecord, decode_event


@dataclass(frozen=True, slots=True)
class TopicMessage:
    """One message of the ``events`` topic as read back."""

    partition: int
    offset: int
    value: bytes | None


@dataclass
class Audit:
    """One fault run's figures (the report's row, see :meth:`row`).

    ``applied``: distinct offsets applied; ``dead_letters_received``: distinct
    expected dead letters that arrived (``_duplicated``: arrivals beyond the
    first); ``either_*``: repeats the window may or may not catch, and what
    became of them; ``examples``: up to ten (partition, offset) per problem.
    """

    produced: int = 0
    expected_applied: int = 0
    applied: int = 0
    applied_twice: int = 0
    lost: int = 0
    dead_letters_expected: int = 0
    dead_letters_received: int = 0
    dead_letters_duplicated: int = 0
    dead_letters_missing: int = 0
    dead_letters_unexpected: int = 0
    dead_letters_stale: int = 0
    wrongly_applied: int = 0
    applied_unknown: int = 0
    either: int = 0
    either_applied: int = 0
    either_dead_lettered: int = 0
    examples: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing applied twice, every expected dead letter there, nothing astray."""
        return not (
            self.lost
            or self.applied_twice
            or self.dead_letters_missing
            or self.dead_letters_unexpected
            or self.wrongly_applied
            or self.applied_unknown
        )

    def row(self) -> dict[str, Any]:
        """The figures as a JSON-ready dict, with ``ok``."""
        return {**asdict(self), "ok": self.ok}


def dead_letter(partition: int, offset: int, raw: bytes | None, reason: str) -> dict[str, Any]:
    """A dead-letter record as ``events.dlq`` carries it (for tests and examples)."""
    text = (raw or b"")[:4096].decode("utf-8", errors="replace")
    return {
        "reason": reason,
        "raw": text,
        "topic": "events",
        "partition": partition,
        "offset": offset,
    }


def classify(
    messages: Iterable[TopicMessage], now_ms: int, dedupe_window: int | None = None
) -> dict[tuple[int, int], str]:
    """``apply``, ``dead_letter`` or ``either`` for each (partition, offset) of a topic.

    ``dedupe_window``: the worker's ``--dedupe-events`` (None: unknown).

    >>> e = b'{"event_id":"e1","ts":1000000000000,"type":"click","user_id":"u","item_id":"i"}'
    >>> m = [TopicMessage(0, 0, e), TopicMessage(0, 1, e), TopicMessage(1, 0, e)]
    >>> m.append(TopicMessage(1, 1, b""))
    >>> sorted(classify(m, now_ms=10**13, dedupe_window=3).items())
    [((0, 0), 'apply'), ((0, 1), 'dead_letter'), ((1, 0), 'dead_letter'), ((1, 1), 'dead_letter')]
    >>> sorted(classify(m, now_ms=10**13, dedupe_window=2).items())
    [((0, 0), 'apply'), ((0, 1), 'either'), ((1, 0), 'either'), ((1, 1), 'dead_letter')]
    """
    ids: dict[tuple[int, int], str | None] = {}
    for m in messages:
        try:
            ids[(m.partition, m.offset)] = decode_event(m.value, now_ms).event_id
        except InvalidRecord:
            ids[(m.partition, m.offset)] = None
    valid = sum(1 for event_id in ids.values() if event_id is not None)
    repeat = "dead_letter" if dedupe_window is not None and valid <= dedupe_window else "either"
    seen: set[str] = set()
    out: dict[tuple[int, int], str] = {}
    for where in sorted(ids):
        event_id = ids[where]
        if event_id is None:
            out[where] = "dead_letter"
        elif event_id in seen:
            out[where] = repeat
        else:
            seen.add(event_id)
            out[where] = "apply"
    return out


def audit_run(
    messages: list[TopicMessage],
    applied: Mapping[int, Counter[int]],
    letters: Iterable[Mapping[str, Any]],
    now_ms: int,
    dedupe_window: int | None = None,
) -> Audit:
    """Compare a topic's messages with applied counts per offset and the dead letters read.

    ``applied`` maps a partition to how often each offset was applied (the
    ledger's epoch that belongs to this topic); ``letters`` are the decoded
    dead letters of the events topic.
    """
    kinds = classify(messages, now_ms, dedupe_window)
    raw = {(m.partition, m.offset): _text(m.value) for m in messages}
    received: Counter[tuple[int, int]] = Counter()
    audit = Audit(produced=len(messages))
    for letter in letters:
        where = (int(letter["partition"]), int(letter["offset"]))
        if raw.get(where) != letter.get("raw"):
            audit.dead_letters_stale += 1  # about a message this log does not hold
            continue
        received[where] += 1
    problems: dict[str, list[list[int]]] = {}

    def note(what: str, where: tuple[int, int]) -> None:
        problems.setdefault(what, [])
        if len(problems[what]) < 10:
            problems[what].append(list(where))

    for where, kind in sorted(kinds.items()):
        times = applied.get(where[0], Counter()).get(where[1], 0)
        letter = received[where] > 0
        audit.applied += times > 0
        if times > 1:
            audit.applied_twice += 1
            note("applied_twice", where)
        if kind == "apply":
            audit.expected_applied += 1
            if times == 0:
                audit.lost += 1
                note("lost", where)
            if letter:
                audit.dead_letters_unexpected += 1
                note("dead_letters_unexpected", where)
        elif kind == "dead_letter":
            audit.dead_letters_expected += 1
            audit.dead_letters_received += letter
            if not letter:
                audit.dead_letters_missing += 1
                note("dead_letters_missing", where)
            if times:
                audit.wrongly_applied += 1
                note("wrongly_applied", where)
        else:
            audit.either += 1
            audit.either_applied += times > 0
            audit.either_dead_lettered += letter
            if times == 0 and not letter:
                audit.lost += 1
                note("lost", where)
    audit.dead_letters_duplicated = sum(n - 1 for n in received.values())
    for partition, counted in applied.items():
        for offset in counted:
            if (partition, offset) not in kinds:
                audit.applied_unknown += 1
                note("applied_unknown", (partition, offset))
    audit.examples = problems
    return audit


def decode_letters(values: Iterable[bytes], events_topic: str) -> list[dict[str, Any]]:
    """The dead letters (JSON) about ``events_topic`` messages; catalog ones are left out."""
    letters = []
    for value in values:
        letter = json.loads(value)
        if letter.get("topic") == events_topic:
            letters.append(letter)
    return letters


def _text(value: bytes | None) -> str:
    return (value or b"")[:4096].decode("utf-8", errors="replace")
