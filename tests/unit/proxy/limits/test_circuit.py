"""Connection limits: admit, queue, refuse with a reason; the queue's order and timeouts."""

from __future__ import annotations

import msgspec
import pytest

from services.proxy.limits.circuit import FULL, QUEUE_FULL, QUEUE_TIMEOUT, Circuit, ConnectionLimits, Verdict


def circuit(**fields: object) -> Circuit[str]:
    return Circuit(msgspec.convert(fields, ConnectionLimits))


def test_no_limit_admits_everything() -> None:
    assert circuit().decide(10_000, 10_000) is Verdict.ADMIT


def test_the_global_count_is_local_plus_others() -> None:
    c = circuit(max_connections=10)
    assert c.decide(4, 5) is Verdict.ADMIT
    assert c.decide(5, 5) is Verdict.REJECT
    assert c.rejected[FULL] == 1


def test_growth_since_the_refresh_is_assumed_on_every_replica() -> None:
    c = circuit(max_connections=10)
    c.refreshed(local=2, replicas=3)
    assert c.has_room(local=3, others=4)  # 3 + 4 + 2 * 1 = 9 < 10
    assert not c.has_room(local=4, others=4)  # 4 + 4 + 2 * 2 = 12
    c.refreshed(local=4, replicas=3)
    assert c.has_room(local=4, others=4)


def test_queue_then_refuse_when_full() -> None:
    c = circuit(max_connections=1, max_pending=2, queue_timeout_sec=0.5)
    assert c.decide(1, 0) is Verdict.QUEUE
    c.enqueue("a", now=0.0)
    assert c.decide(1, 0) is Verdict.QUEUE
    c.enqueue("b", now=0.1)
    assert c.decide(0, 0) is Verdict.REJECT  # full queue: nobody jumps it, even with room
    assert c.reject_reason == QUEUE_FULL and c.rejected[QUEUE_FULL] == 1
    assert c.next_ready(1, 0, now=0.2) is None  # no room yet
    assert c.next_ready(0, 0, now=0.2) == "a"  # oldest first
    c.leave("b")
    assert c.next_ready(0, 0, now=0.3) is None and c.pending == 0


def test_waiters_time_out() -> None:
    c = circuit(max_connections=1, max_pending=5, queue_timeout_sec=0.5)
    c.enqueue("a", now=0.0)
    c.enqueue("b", now=0.3)
    assert c.expired(now=0.4) == []
    assert c.next_ready(0, 0, now=0.6) is None  # a's time is up: answered by expired(), not started
    assert c.expired(now=0.6) == ["a"]
    assert c.rejected[QUEUE_TIMEOUT] == 1
    assert c.next_ready(0, 0, now=0.7) == "b"


def test_settings_are_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="max_pending"):
        circuit(max_pending=3)
    with pytest.raises(msgspec.ValidationError):
        circuit(max_connections=-1)
