"""The embedded broker: ready fast, real Kafka protocol, never an orphan, clear errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from streams.broker import BrokerError, EmbeddedBroker, free_port, wait_until_ready
from tests.conftest import RECSTREAM
from tests.kafka_readers import topic_names

FOUR_TOPICS = {"events", "items", "scores", "events.dlq"}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _broker_pids() -> set[int]:
    out = subprocess.run(
        ["pgrep", "-f", "tansu.* broker --listener-url"], capture_output=True, text=True
    ).stdout
    return {int(pid) for pid in out.split()}


def test_broker_command_says_where_it_is_ready_and_librdkafka_lists_the_four_topics():
    port = free_port()
    process = subprocess.Popen(
        [RECSTREAM, "broker", "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        assert f"127.0.0.1:{port}" in line
        assert topic_names(f"127.0.0.1:{port}") >= FOUR_TOPICS
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_sigkilled_parent_leaves_no_orphan_broker():
    before = _broker_pids()
    code = (
        "import time; from streams.broker import EmbeddedBroker\n"
        "b = EmbeddedBroker().start(); print(b.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    broker_pid = int(parent.stdout.readline())
    assert broker_pid not in before and _alive(broker_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(broker_pid)


def test_broker_stops_when_the_block_fails():
    with pytest.raises(ZeroDivisionError), EmbeddedBroker() as broker:
        pid = broker.pid
        1 / 0  # noqa: B018
    time.sleep(0.1)
    assert not _alive(pid)


def test_a_broker_that_is_not_there_is_a_clear_error_when_the_wait_ends():
    with pytest.raises(BrokerError, match=r"no Kafka broker answered at 127\.0\.0\.1"):
        wait_until_ready(f"127.0.0.1:{free_port()}", timeout_s=3)


def test_produce_against_a_missing_broker_exits_with_a_message_not_a_hang():
    result = subprocess.run(
        [RECSTREAM, "produce", "--broker", f"127.0.0.1:{free_port()}", "--events", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no Kafka broker answered" in result.stderr


def test_a_port_in_use_is_refused_with_its_reason(broker):
    with pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(port=broker.port).start()
