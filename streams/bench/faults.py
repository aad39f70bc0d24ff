"""``recstream bench faults``: the real worker against the real broker, under faults.

Each fault is one run on its own topics: a stream from the simulated shop
with malformed events and immediate repeats mixed in is produced at a paced
rate while the real ``recstream worker`` process (with the applied-offsets
ledger on, :mod:`streams.ledger`) is struck by the fault, restarted as a
supervisor would, and finally stopped with SIGTERM (a graceful last
checkpoint). Then the ``events`` topic and ``events.dlq`` are read back and
compared per offset with the ledger of the final checkpoint
(:mod:`streams.bench.fault_audit`): produced, applied, applied twice, lost, dead
letters expected, received (distinct) and duplicated.

The faults:

- ``sigkill``: SIGKILL on a seeded schedule (:func:`kill_schedule`): during
  a batch (the state ahead of everything checkpointed and sent), during a
  checkpoint child's write (its temporary file on disk), during a publish
  (scores handed to the producer, not flushed), and after seeded delays;
  the moment each kill landed is logged in the row. The deduplication
  window is small (``--dedupe-events``), so the stream is longer than it:
  exactly-once must come from offsets, not from event ids.
- ``broker_restart``: the embedded broker stopped and started again with
  the worker running, right after a first part of the stream was produced.
  It keeps everything in memory, so its topics come back empty: what the
  worker had not applied of the first part by then is reported as
  ``erased_by_broker`` (the broker lost it, not the worker); nothing
  produced after the restart may be lost.
- ``corrupt_checkpoint``: the newest checkpoint's state broken (its header
  fine) while the worker is down; the worker must fall back to the older one
  and apply again from its offsets.
- ``disk_full``: one periodic checkpoint fails with ENOSPC; the worker goes on.
- ``poison_batch``: applying one batch raises; the worker stops (exit 70) and
  the restart applies the batch once.
- ``malformed``: one in seven events malformed, plus one SIGKILL, so dead
  letters are repeated: duplicates are counted apart and none is lost.
- ``event_time`` (in-process, no Kafka): one far-future event and one
  lagging partition, AUC per task against the same stream without them
  (:mod:`streams.bench.event_time`).

Example
-------
>>> [k["moment"] for k in kill_schedule(seed=7, kills=6)]
['batch', 'batch', 'checkpoint', 'delay', 'checkpoint', 'publish']
>>> report = run(FaultOptions(faults=("sigkill",), events=20_000))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import re
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from streams.bench.event_time import EventTimeOptions, run_check
from streams.bench.fault_audit import Audit, TopicMessage, audit_run, classify, decode_letters
from streams.bench.fault_kit import (
    Feeder,
    WorkerProcess,
    applied_count,
    fault_records,
    read_topic,
    settle,
)
from streams.broker import EmbeddedBroker, free_port
from streams.ledger import ApplyLedger
from streams.settings import TopicNames
from streams.topics import ensure_topics

KAFKA_FAULTS = (
    "sigkill",
    "broker_restart",
    "corrupt_checkpoint",
    "disk_full",
    "poison_batch",
    "malformed",
)
"""The faults run against the real worker and broker."""
FAULTS = (*KAFKA_FAULTS, "event_time")
PARTITIONS = 4
AUC_TOLERANCE = 0.01
"""Issue 9: AUC per task within this of the same stream without the event-time faults."""
MALFORMED_DEDUPE = 200_000
"""The ``malformed`` run's deduplication window: longer than its stream (see ``malformed``)."""
MOMENTS = ("batch", "checkpoint", "publish", "delay")
HANG_S = 300.0
"""Hang guard of every wait."""
LEAD_S = 20.0
"""A batch or publish kill is armed this many seconds of the feed beyond where it stands when
the worker starts: past the restart and the catch-up, once checkpoints are being written."""


@dataclass(frozen=True)
class FaultOptions:
    """Which faults, how much stream, and the worker's flags."""

    faults: tuple[str, ...] = FAULTS
    events: int = 30_000
    """Most events per run (a run stops its feed once its faults are done)."""
    rate: float = 400.0
    """Events produced per second."""
    kills: int = 6
    seed: int = 7
    dedupe_events: int = 1_000
    batch_size: int = 200
    checkpoint_interval_s: float = 1.0
    parallel: int = 3
    """Runs at a time (they wait on group joins much more than they compute)."""
    auc_events: int = 60_000
    auc_seeds: tuple[int, ...] = (7, 8, 9, 10, 11)
    workdir: Path | None = None
    report: Path | None = None
    log: Callable[[str], None] = print


def kill_schedule(seed: int, kills: int) -> list[dict[str, Any]]:
    """``kills`` kills, each at a moment (batch, checkpoint, publish, delay), seeded.

    Every moment comes at least once when ``kills >= 4``; ``delay_s`` is how
    long after the worker owns its partitions a ``delay`` kill strikes, and
    the wait before a checkpoint kill starts watching; ``partition`` and
    ``gap`` place a batch or publish kill ``gap`` messages beyond what was
    produced when the worker started.
    """
    rng = random.Random(seed)
    moments = [MOMENTS[n % len(MOMENTS)] for n in range(kills)]
    rng.shuffle(moments)
    return [
        {
            "moment": moment,
            "delay_s": round(rng.uniform(0.3, 4.0), 2),
            "partition": rng.randrange(PARTITIONS),
            "gap": rng.randrange(20, 200),
        }
        for moment in moments
    ]


class Run:
    """One fault's topics, stream, worker and working directory."""

    def __init__(
        self,
        name: str,
        bootstrap: str,
        options: FaultOptions,
        workdir: Path,
        dedupe_events: int | None = None,
    ) -> None:
        self.name = name
        self.dedupe_events = dedupe_events or options.dedupe_events
        self.options = options
        self.bootstrap = bootstrap
        self.topics = TopicNames(prefix=f"{name}-{uuid.uuid4().hex[:6]}.")
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.feeders: list[Feeder] = []
        ensure_topics(bootstrap, self.topics, partitions=PARTITIONS)
        self.worker = WorkerProcess(
            bootstrap,
            self.topics,
            self.dir / "checkpoints",
            "--batch-size",
            str(options.batch_size),
            "--dedupe-events",
            str(self.dedupe_events),
            "--checkpoint-interval",
            str(options.checkpoint_interval_s),
        )

    def note(self, what: str, **details: Any) -> None:
        """Log one step of the run (kept in the report)."""
        entry = {"t_s": round(time.monotonic() - self.started, 2), "what": what, **details}
        self.events.append(entry)
        self.options.log(f"  [{self.name} {entry['t_s']:7.2f}s] {what} {_short(details)}")

    def feed(
        self,
        malformed_every: int = 50,
        seed_offset: int = 0,
        events: int | None = None,
        rate: float | None = None,
    ) -> Feeder:
        records = fault_records(
            self.options.events if events is None else events,
            seed=self.options.seed + seed_offset,
            malformed_every=malformed_every,
        )
        feeder = Feeder(self.bootstrap, self.topics, records, rate or self.options.rate)
        self.feeders.append(feeder)
        return feeder.start()

    def start(self, faults: str = "") -> None:
        self.worker.start(faults)
        self.note("worker started", pid=self.worker.pid, faults=faults or None)

    def finish(
        self,
        feeder: Feeder,
        stop_feed: bool = True,
        applied_of: Callable[[ApplyLedger], dict[int, Counter[int]]] | None = None,
    ) -> dict[str, Any]:
        """Stop the feed, let the worker catch up, SIGTERM it; audit the topics against it.

        ``applied_of`` picks the ledger's counts that belong to this topic
        (default: each partition's current epoch).
        """
        if stop_feed:
            feeder.stop()
        feeder.wait()
        produced = len(feeder.acked)
        topic = read_topic(self.bootstrap, self.topics.events, expected=produced)
        self.note("feed over", produced=produced, read_back=len(topic), failed=feeder.failed)
        settle(self.worker, at_least=len(topic))
        code = self.worker.signal(signal.SIGTERM, timeout_s=HANG_S)
        self.note("SIGTERM", exit_code=code)
        ledger, _offsets, checkpoint = self.worker.final_ledger()
        letters = decode_letters(
            (m.value for m in read_topic(self.bootstrap, self.topics.dlq, idle_s=2.0)),
            self.topics.events,
        )
        if applied_of is None:
            applied = {p: ledger.counts(p) for p in ledger.partitions()}
        else:
            applied = applied_of(ledger)
        now_ms = int(time.time() * 1000)
        audit = audit_run(topic, applied, letters, now_ms, self.dedupe_events)
        return self.row(
            audit,
            final_checkpoint=checkpoint,
            exit_code=code,
            dedupe_events=self.dedupe_events,
        )

    def row(self, audit: Audit, **extra: Any) -> dict[str, Any]:
        return {"name": self.name, **audit.row(), **extra, "log": self.events}

    def close(self) -> None:
        """Stop the worker and every feed (also after a failure)."""
        self.worker.stop()
        for feeder in self.feeders:
            feeder.stop()


# ---------------------------------------------------------------- the faults


def sigkill(run: Run) -> dict[str, Any]:
    """Kills on the seeded schedule while the stream flows; then a graceful stop."""
    options = run.options
    schedule = kill_schedule(options.seed, options.kills)
    feeder = run.feed(events=10**8)  # until the kills are done: then the feed stops
    lead = int(options.rate / PARTITIONS * LEAD_S)
    landed = []
    for number, kill in enumerate(schedule, start=1):
        faults = ""
        if kill["moment"] in ("batch", "publish"):
            partition = kill["partition"]
            kill["offset"] = feeder.end(partition) + lead + kill["gap"]
            faults = f"stall_{kill['moment']}@{partition}:{kill['offset']}"
        run.start(faults)
        landed.append({"kill": number, **kill, **strike(run, kill)})
    run.start()
    row = run.finish(feeder)
    row["kills"] = landed
    return row


def strike(run: Run, kill: dict[str, Any]) -> dict[str, Any]:
    """Wait for the kill's moment, SIGKILL the worker, and say where it landed."""
    worker = run.worker
    checkpoints = worker.checkpoint_dir
    moment = kill["moment"]
    since = time.time()
    if moment in ("batch", "publish"):
        marker = (
            checkpoints / "faults-fired" / f"stall_{moment}@{kill['partition']}:{kill['offset']}"
        )
        _wait(lambda: marker.exists(), HANG_S, f"the stall at {marker.name}")
    else:  # after a checkpoint of this run, so that the restart restores one
        written = worker.metrics().get("recstream_checkpoints_total", 0)
        worker.wait_for(
            lambda m: m.get("recstream_checkpoints_total", 0) > written, HANG_S, "a checkpoint"
        )
        time.sleep(kill["delay_s"])
        if moment == "checkpoint":
            since = time.time()
            _wait(lambda: _temporary(checkpoints, since), HANG_S, "a checkpoint being written")
    before = worker.metrics()
    writing = _temporary(checkpoints, since)
    worker.kill()
    landed = {
        "pid": worker.pid,
        "applied_before_kill": applied_count(before),
        "checkpoints_before_kill": before.get("recstream_checkpoints_total"),
        "checkpoint_being_written": writing,
        "temporary_file_left": _temporary(checkpoints, since),
    }
    run.note(f"SIGKILL during {moment}", **landed)
    return landed


def broker_restart(options: FaultOptions, workdir: Path) -> dict[str, Any]:
    """The broker stopped and started empty with the worker running; the stream goes on."""
    port = free_port()
    with EmbeddedBroker(port=port) as first:
        run = Run("broker_restart", first.bootstrap, options, workdir)
        try:
            return _across_a_restart(run, first, options)
        finally:
            run.close()


def _across_a_restart(run: Run, broker: EmbeddedBroker, options: FaultOptions) -> dict[str, Any]:
    run.start()
    before = run.feed(events=options.events // 3, rate=options.rate * 10)  # a backlog
    before.wait()  # and at once, while the worker is still applying it:
    ends = {m.partition: 0 for m in before.acked}
    for m in before.acked:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    seen = applied_count(run.worker.metrics())
    run.note("before the restart", produced=len(before.acked), ends=ends, worker_had_seen=seen)
    broker.stop()
    run.note("broker stopped")
    time.sleep(1.0)
    broker.start()
    ensure_topics(broker.bootstrap, run.topics, partitions=PARTITIONS)
    run.note("broker started again, empty")
    after = run.feed(seed_offset=1, events=options.events // 3)
    row = run.finish(after, stop_feed=False, applied_of=lambda ledger: _after(ledger, ends))
    ledger, _offsets, _name = run.worker.final_ledger()
    erased, twice = _erased(ledger, before.acked, run.dedupe_events)
    resets = len(re.findall(r"has no offset \d+ any more", run.worker.log_text()))
    row.update(
        {
            "produced_before_restart": len(before.acked),
            "erased_by_broker": erased,
            "applied_twice_before_restart": twice,
            "resets_noticed": resets,
        }
    )
    row["applied_twice"] += twice
    row["ok"] = row["ok"] and twice == 0
    return row


def corrupt_checkpoint(run: Run) -> dict[str, Any]:
    """Kill; break the newest checkpoint's state; the restart falls back to the older one."""
    run.start()
    feeder = run.feed(events=10**8)  # each checkpoint waited for needs new events: feed until done
    run.worker.wait_for(
        lambda m: m.get("recstream_checkpoints_total", 0) >= 3, HANG_S, "three checkpoints"
    )
    run.worker.kill()
    newest = sorted(run.worker.checkpoint_dir.glob("checkpoint-*.pt"))[-1]
    payload = torch.load(newest, map_location="cpu", weights_only=True)
    payload["state"]["pipeline"] = {"broken": True}  # the header and the offsets stay valid
    torch.save(payload, newest)
    run.note("SIGKILL, newest checkpoint's state broken", checkpoint=newest.name)
    run.start()
    time.sleep(3.0)
    row = run.finish(feeder)
    log = run.worker.log_text()
    restored = re.findall(r"restored (checkpoint-\S+\.pt)", log)
    row.update(
        {
            "corrupted": newest.name,
            "refused": f"refused checkpoint {newest.name}" in log,
            "restored_instead": restored[-1] if restored else None,
        }
    )
    return row


def disk_full(run: Run) -> dict[str, Any]:
    """The second checkpoint fails with ENOSPC; the worker keeps going."""
    run.start("disk_full_checkpoint@2")
    feeder = run.feed(events=10**8)  # each checkpoint waited for needs new events: feed until done
    marker = run.worker.checkpoint_dir / "faults-fired" / "disk_full_checkpoint@2"
    _wait(marker.exists, HANG_S, "the failed checkpoint")
    written = run.worker.metrics().get("recstream_checkpoints_total", 0)
    run.worker.wait_for(
        lambda m: m.get("recstream_checkpoints_total", 0) >= written + 2,
        HANG_S,
        "checkpoints after the failure",
    )
    run.note("checkpoint 2 failed (ENOSPC); later ones written", checkpoints_before=written)
    row = run.finish(feeder)
    row["failure_logged"] = "No space left on device" in run.worker.log_text()
    return row


def poison_batch(run: Run) -> dict[str, Any]:
    """One batch raises: the worker exits 70 and its restart applies the batch once."""
    spec = f"poison_batch@1:{run.options.events // 20}"
    run.start(spec)
    feeder = run.feed()
    code = run.worker.process.wait(timeout=HANG_S)
    run.note("worker exited", exit_code=code)
    run.start()
    time.sleep(3.0)
    row = run.finish(feeder)
    row["poison_exit_code"] = code
    return row


def malformed(run: Run) -> dict[str, Any]:
    """One event in seven malformed, and one SIGKILL so that dead letters repeat.

    The deduplication window is longer than the stream here, so every repeat
    must be dead-lettered (with a shorter one, a repeat may be applied).
    """
    run.start()
    feeder = run.feed(malformed_every=7)
    run.worker.wait_for(
        lambda m: m.get("recstream_checkpoints_total", 0) >= 2, HANG_S, "two checkpoints"
    )
    time.sleep(0.7)
    run.worker.kill()
    run.note("SIGKILL")
    run.start()
    time.sleep(3.0)
    return run.finish(feeder)


def event_time(options: FaultOptions) -> dict[str, Any]:
    """AUC per task with one far-future event and one lagging partition, and without."""
    report = run_check(EventTimeOptions(events=options.auc_events, seeds=options.auc_seeds))
    worst = max(abs(d) for kind in report["mean_difference"].values() for d in kind.values())
    return {
        "name": "event_time",
        "max_auc_difference": worst,
        "ok": worst <= AUC_TOLERANCE,
        **report,
    }


# ---------------------------------------------------------------- running


def run(options: FaultOptions) -> dict[str, Any]:
    """Run the chosen faults (``parallel`` at a time); return (and write) the report."""
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="recstream-faults-"))
    kafka_faults = [f for f in options.faults if f in KAFKA_FAULTS]
    rows: dict[str, dict[str, Any]] = {}
    with EmbeddedBroker() as broker:

        def one(name: str) -> dict[str, Any]:
            if name == "broker_restart":
                try:
                    return broker_restart(options, workdir)
                except Exception as err:
                    return {"name": name, "ok": False, "error": repr(err)}
            window = MALFORMED_DEDUPE if name == "malformed" else None
            run_ = Run(name, broker.bootstrap, options, workdir, dedupe_events=window)
            try:
                return {
                    "sigkill": sigkill,
                    "corrupt_checkpoint": corrupt_checkpoint,
                    "disk_full": disk_full,
                    "poison_batch": poison_batch,
                    "malformed": malformed,
                }[name](run_)
            except Exception as err:  # reported as a failed row, with the worker's log
                return {"name": name, "ok": False, "error": repr(err), "log": run_.events}
            finally:
                run_.close()

        with ThreadPoolExecutor(max_workers=max(1, options.parallel)) as pool:
            futures = {name: pool.submit(one, name) for name in kafka_faults}
            for name, future in futures.items():
                rows[name] = future.result()
    if "event_time" in options.faults:
        rows["event_time"] = event_time(options)
    report = {
        "workdir": str(workdir),
        "options": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(options).items()
            if k not in ("log", "workdir", "report")
        },
        "faults": [rows[name] for name in options.faults if name in rows],
    }
    if options.report:
        options.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def table(report: dict[str, Any]) -> str:
    """The per-fault figures as a text table."""
    columns = (
        ("fault", "name"),
        ("produced", "produced"),
        ("applied", "applied"),
        ("twice", "applied_twice"),
        ("lost", "lost"),
        ("DL expected", "dead_letters_expected"),
        ("DL received", "dead_letters_received"),
        ("DL dup", "dead_letters_duplicated"),
        ("ok", "ok"),
    )
    lines = ["  ".join(f"{title:>11}" for title, _ in columns)]
    for row in report["faults"]:
        if row["name"] == "event_time":
            continue
        lines.append("  ".join(f"{row.get(key, '-')!s:>11}" for _, key in columns))
    for row in report["faults"]:
        if row["name"] == "broker_restart" and "erased_by_broker" in row:
            lines.append(
                f"broker_restart: {row['produced_before_restart']} produced before the restart, "
                f"{row['erased_by_broker']} of them erased by the broker before the worker "
                f"applied them, {row['resets_noticed']} partition resets noticed"
            )
        if row["name"] == "sigkill" and "kills" in row:
            for kill in row["kills"]:
                lines.append(
                    f"kill {kill['kill']}: during {kill['moment']}, after "
                    f"{kill['applied_before_kill']:.0f} messages seen, checkpoint being written: "
                    f"{kill['checkpoint_being_written']}"
                )
        if row["name"] == "event_time":
            lines.append(
                f"event_time ({row['events']} events, seeds {row['seeds']}; far future "
                f"{row['ahead_s']:.0f} s ahead, partition {row['lag_partition']} "
                f"{row['lag_s']:.0f} s late): mean AUC per task, and its difference from clean"
            )
            for kind, auc in row["mean_auc"].items():
                difference = row["mean_difference"].get(kind)
                error = row["standard_error"].get(kind)
                more = f"  difference {difference}, standard error {error}" if difference else ""
                lines.append(f"  {kind:>10}: {auc}{more}")
            lines.append(f"  largest difference {row['max_auc_difference']}, ok {row['ok']}")
        if "error" in row:
            lines.append(f"{row['name']}: ERROR {row['error']}")
    return "\n".join(lines)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.001)


def _temporary(directory: Path, since: float) -> str | None:
    """A checkpoint being written (its temporary file, changed since ``since``), if any."""
    for path in directory.glob("checkpoint-*.tmp"):
        try:
            if path.stat().st_mtime >= since:
                return path.name
        except OSError:  # renamed into place meanwhile
            continue
    return None


def _after(ledger: ApplyLedger, ends: dict[int, int]) -> dict[int, Counter[int]]:
    """Applied counts of the log after a broker restart: every epoch after the first, or,
    where no reset was noticed, the first epoch's offsets beyond what came before."""
    counts: dict[int, Counter[int]] = {}
    for p in ledger.partitions():
        if ledger.epochs(p) > 1 or p not in ends:
            first = 1 if p in ends else 0
            counts[p] = sum(
                (ledger.counts(p, e) for e in range(first, ledger.epochs(p))), Counter()
            )
        else:
            counts[p] = Counter({o: n for o, n in ledger.counts(p, 0).items() if o >= ends[p]})
    return counts


def _erased(ledger: ApplyLedger, before: list[TopicMessage], window: int) -> tuple[int, int]:
    """Of the events to apply produced before the broker restart: never applied, applied twice."""
    kinds = classify(before, int(time.time() * 1000), window)
    counts = {p: ledger.counts(p, epoch=0) for p in ledger.partitions()}
    times = [
        counts.get(p, Counter()).get(o, 0) for (p, o), kind in kinds.items() if kind == "apply"
    ]
    return sum(1 for n in times if n == 0), sum(1 for n in times if n > 1)


def _short(details: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in details.items() if v is not None)


def options_with(options: FaultOptions, **changes: Any) -> FaultOptions:
    """``options`` with ``changes`` (None values ignored)."""
    return replace(options, **{k: v for k, v in changes.items() if v is not None})
