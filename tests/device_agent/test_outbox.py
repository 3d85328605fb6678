"""The disk queue: seq strictly increasing across restarts, bounded with the oldest dropped and counted."""

from __future__ import annotations

import pytest

from device_agent.outbox import Outbox


def payload(msg_id: str, seq: int) -> bytes:
    return f"{seq}:{msg_id}".encode()


def test_seq_and_session_survive_a_reopen_and_messages_come_out_in_order(tmp_path):
    path = tmp_path / "q.sqlite"
    box = Outbox(path, max_messages=100)
    first = [box.enqueue("telemetry", payload) for _ in range(3)]
    assert [m.seq for m in first] == [1, 2, 3] and len({m.msg_id for m in first}) == 3
    assert box.next_counter("session") == 1
    box.close()

    box = Outbox(path, max_messages=100)  # a restart: nothing lost, nothing renumbered
    update = box.enqueue("update", payload)
    assert update.seq == 4 and box.next_counter("session") == 2
    waiting = box.peek()
    assert [m.seq for m in waiting] == [1, 2, 3, 4] and waiting[0].payload == payload(first[0].msg_id, 1)
    assert [m.seq for m in box.peek(kind="update")] == [4]
    assert [m.seq for m in box.peek(after_id=waiting[1].id, limit=1)] == [3]
    box.delete([waiting[0].id, waiting[2].id])
    assert [m.seq for m in box.peek()] == [2, 4]
    assert box.stats().pending == 2 and box.last_seq() == 4


def test_past_the_bound_the_oldest_are_dropped_and_counted(tmp_path):
    box = Outbox(tmp_path / "q.sqlite", max_messages=10)
    for _ in range(25):
        box.enqueue("telemetry", payload)
    assert [m.seq for m in box.peek(limit=100)] == list(range(16, 26))
    stats = box.stats()
    assert (stats.pending, stats.dropped_total) == (10, 15)
    box.close()
    assert Outbox(tmp_path / "q.sqlite", max_messages=10).stats().dropped_total == 15


def test_a_message_handed_to_paho_is_not_the_one_dropped_nor_counted(tmp_path):
    # paho delivers what it was handed whatever the outbox does: dropping and counting it would
    # report a loss that did not happen (CI once saw 47 dropped for 46 that never arrived).
    box = Outbox(tmp_path / "q.sqlite", max_messages=3)
    for _ in range(3):
        box.enqueue("telemetry", payload)
    first, second = box.claim(limit=2)  # read and held in one step: the publisher hands these to paho
    for _ in range(4):
        box.enqueue("telemetry", payload)
    assert [m.seq for m in box.peek()] == [1, 2, 5, 6, 7], "the held two stay; of the rest, the newest 3"
    assert box.stats().dropped_total == 2, "3 and 4, never sent, went"
    box.delete([first.id, second.id])  # their acks came
    box.enqueue("telemetry", payload)
    assert [m.seq for m in box.peek()] == [6, 7, 8] and box.stats().dropped_total == 3
    (claimed,) = box.claim(limit=1)
    box.release(claimed.id)  # paho did not take it: it is the oldest again, and goes first
    box.enqueue("telemetry", payload)
    assert [m.seq for m in box.peek()] == [7, 8, 9] and box.stats().dropped_total == 4


def test_slow_acks_never_drop_the_message_just_queued(tmp_path):
    # All the bound's rows in flight and unacked: the next message waits beside them. Counting the
    # held rows against the bound dropped it (CI saw 48 dropped for 47 that never arrived).
    box = Outbox(tmp_path / "q.sqlite", max_messages=3)
    for _ in range(3):
        box.enqueue("telemetry", payload)
    box.claim(limit=3)
    box.enqueue("telemetry", payload)
    assert [m.seq for m in box.peek()] == [1, 2, 3, 4] and box.stats().dropped_total == 0


def test_a_payload_that_fails_to_build_takes_no_seq(tmp_path):
    box = Outbox(tmp_path / "q.sqlite", max_messages=10)

    def broken(msg_id: str, seq: int) -> bytes:
        raise ValueError("bad payload")

    with pytest.raises(ValueError):
        box.enqueue("telemetry", broken)
    assert box.enqueue("telemetry", payload).seq == 1 and box.stats().pending == 1
