"""The conversation affinity index: digests, exclusive take, TTL, LRU bounds, per-owner isolation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from bridge.codex.affinity import (
    ConversationIndex,
    Tip,
    after_turn,
    extend,
    start_digest,
)
from bridge.codex.turn import HistoryMessage, ToolSpec, TurnRequest
from bridge.worker.supervisor import Worker

TTL_S = 600.0


@dataclass
class _Worker:
    pid: int | None = 100


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Index:
    """An index on a fake clock, recording the threads it released and its outcomes."""

    def __init__(self, *, max_threads: int = 8, max_per_owner: int = 4) -> None:
        self.clock = Clock()
        self.released: list[str] = []
        self.outcomes: list[str] = []
        self.worker = _Worker()
        self.index = ConversationIndex(
            profile="plain",
            max_threads=max_threads,
            ttl_s=TTL_S,
            max_per_owner=max_per_owner,
            clock=self.clock,
            release=lambda tip: self.released.append(tip.thread_id),
            observe=self.outcomes.append,
        )

    def tip(self, thread_id: str, owner: str = "alice") -> Tip:
        return self.index.new_tip(owner, cast(Worker, self.worker), 100, thread_id)


def digest(n: int, owner: str = "alice") -> bytes:
    return extend(
        start_digest(owner, TurnRequest(input="x"), "plain"), [HistoryMessage("user", str(n))]
    )


def test_digest_of_a_kept_turn_is_what_its_next_request_hashes_to() -> None:
    request = TurnRequest(input="hi", history=(HistoryMessage("user", "earlier"),))
    base = extend(start_digest("alice", request, "plain"), request.history)
    kept = after_turn(base, request, "hello")
    following = TurnRequest(
        input="more",
        history=(
            HistoryMessage("user", "earlier"),
            HistoryMessage("user", "hi"),
            HistoryMessage("assistant", "hello"),
        ),
    )
    assert extend(start_digest("alice", following, "plain"), following.history) == kept
    # Another owner, other instructions, other tools or another reply: another digest.
    assert extend(start_digest("bob", following, "plain"), following.history) != kept
    instructed = TurnRequest(input="more", instructions="Be terse.", history=following.history)
    assert extend(start_digest("alice", instructed, "plain"), following.history) != kept
    tool = ToolSpec("f", "", {"type": "object"})
    tooled = TurnRequest(input="more", tools=(tool,), history=following.history)
    assert extend(start_digest("alice", tooled, "plain"), following.history) != kept
    assert after_turn(base, request, "hello!") != kept


def test_take_is_exclusive_and_for_the_owner_only() -> None:
    t = Index()
    t.index.put(digest(1), t.tip("thread-1"))
    assert t.index.take("bob", digest(1)) is None
    taken = t.index.take("alice", digest(1))
    assert taken is not None and taken.thread_id == "thread-1"
    assert t.index.take("alice", digest(1)) is None
    assert t.released == []


def test_tip_past_its_ttl_is_dropped_and_its_thread_released() -> None:
    t = Index()
    t.index.put(digest(1), t.tip("thread-1"))
    t.index.put(digest(2), t.tip("thread-2"))
    t.clock.now += TTL_S + 1
    assert t.index.take("alice", digest(1)) is None
    assert sorted(t.released) == ["thread-1", "thread-2"]
    assert len(t.index) == 0
    assert t.outcomes == ["expired", "expired"]


def test_periodic_sweep_releases_expired_tips_without_any_request() -> None:
    t = Index()
    t.index.put(digest(1), t.tip("thread-1"))
    t.clock.now += TTL_S / 2
    t.index.put(digest(2), t.tip("thread-2"))
    t.clock.now += TTL_S / 2 + 1
    assert t.index.sweep() == 1
    assert t.released == ["thread-1"]
    assert len(t.index) == 1


def test_least_recently_kept_tip_is_evicted_beyond_the_cap() -> None:
    t = Index(max_threads=2)
    for n in range(3):
        t.index.put(digest(n, f"owner-{n}"), t.tip(f"thread-{n}", f"owner-{n}"))
    assert t.released == ["thread-0"]
    assert t.outcomes == ["evicted"]
    assert t.index.take("owner-0", digest(0, "owner-0")) is None
    assert t.index.take("owner-2", digest(2, "owner-2")) is not None


def test_one_owner_cannot_hold_more_than_its_share() -> None:
    t = Index(max_threads=8, max_per_owner=2)
    t.index.put(digest(0, "bob"), t.tip("bob-0", "bob"))
    for n in range(3):
        t.index.put(digest(n), t.tip(f"thread-{n}"))
    assert t.released == ["thread-0"]
    assert t.index.take("bob", digest(0, "bob")) is not None


def test_tip_of_a_restarted_worker_is_a_miss_with_nothing_to_release() -> None:
    t = Index()
    t.index.put(digest(1), t.tip("thread-1"))
    t.worker.pid = 200
    assert t.index.take("alice", digest(1)) is None
    assert t.released == []
    assert t.outcomes == ["stale"]
    assert len(t.index) == 0


def test_replaced_tip_releases_the_thread_it_replaces() -> None:
    t = Index()
    t.index.put(digest(1), t.tip("thread-1"))
    t.index.put(digest(1), t.tip("thread-2"))
    assert t.released == ["thread-1"]
    taken = t.index.take("alice", digest(1))
    assert taken is not None and taken.thread_id == "thread-2"
