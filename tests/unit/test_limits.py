"""OutputLimiter: stop sequences across delta boundaries and exact token cuts."""

from __future__ import annotations

import pytest

from bridge.api.limits import MAX_STOP_CHARS, OutputLimiter, stop_sequences
from bridge.errors import InvalidRequest
from bridge.tokens import count_tokens


def feed_all(limiter: OutputLimiter, deltas: list[str]) -> tuple[str, str | None]:
    out, reason = "", None
    for delta in deltas:
        text, hit = limiter.feed(delta)
        out += text
        reason = reason or hit
    if reason is None:
        out += limiter.flush()
    return out, reason


def test_stop_inside_one_delta_keeps_only_the_text_before_it() -> None:
    assert feed_all(OutputLimiter(["END"], None), ["abcENDdef"]) == ("abc", "stop")


def test_stop_split_across_deltas_is_still_matched() -> None:
    assert feed_all(OutputLimiter(["END"], None), ["ab", "cE", "N", "Dxyz"]) == ("abc", "stop")


def test_a_false_start_of_a_stop_sequence_is_released() -> None:
    limiter = OutputLimiter(["END"], None)
    assert limiter.feed("abE") == ("ab", None)  # "E" held back: it might start END
    assert limiter.feed("x") == ("Ex", None)
    assert feed_all(OutputLimiter(["END"], None), ["abEN"]) == ("abEN", None)


def test_the_earliest_of_several_stops_wins() -> None:
    assert feed_all(OutputLimiter(["zz", "b"], None), ["a b zz"]) == ("a ", "stop")


def test_token_limit_cuts_at_an_exact_token_boundary() -> None:
    words = [f"word{i} " for i in range(50)]
    out, reason = feed_all(OutputLimiter([], 9), words)
    assert reason == "length"
    assert count_tokens(out) == 9
    assert "".join(words).startswith(out)


def test_nothing_is_emitted_after_a_limit() -> None:
    limiter = OutputLimiter(["x"], None)
    limiter.feed("ax")
    assert limiter.done
    assert limiter.feed("more") == ("", None)
    assert limiter.flush() == ""


def test_inactive_limiter_passes_text_through() -> None:
    limiter = OutputLimiter([], None)
    assert not limiter.active
    assert feed_all(limiter, ["a", "b"]) == ("ab", None)


def test_the_stop_that_completes_first_wins_whatever_the_delta_boundaries() -> None:
    # Token by token, "bc" is complete before "abcd" is: the cut must not
    # depend on where Codex happened to split the deltas.
    for deltas in (["abcd"], ["ab", "cd"], ["a", "b", "c", "d"]):
        assert feed_all(OutputLimiter(["abcd", "bc"], None), deltas) == ("a", "stop")


def test_stop_matching_work_is_linear_in_a_long_reply_of_near_misses() -> None:
    # A 400k-character reply in 1..7-character deltas that keeps almost
    # matching a 256-character stop: the case that rescanned held text.
    long_stop = "a" * (MAX_STOP_CHARS - 1) + "b"
    unit = "a" * 200 + "c"
    reply = unit * (400_000 // len(unit))
    deltas: list[str] = []
    i = 0
    while i < len(reply):
        size = 1 + i % 7
        deltas.append(reply[i : i + size])
        i += size
    limiter = OutputLimiter([long_stop, "zz"], None)
    out: list[str] = []
    for delta in deltas:
        text, reason = limiter.feed(delta)
        assert reason is None
        assert limiter.held < MAX_STOP_CHARS
        out.append(text)
    out.append(limiter.flush())
    assert "".join(out) == reply
    # KMP: each character examined once per stop, fall-backs never more than advances.
    assert limiter.steps <= 2 * 2 * len(reply)


def test_a_stop_sequence_is_found_after_a_long_near_miss() -> None:
    stop = "a" * 10 + "b"
    deltas = ["a"] * 25 + ["b", "tail"]
    assert feed_all(OutputLimiter([stop], None), deltas) == ("a" * 15, "stop")


def test_stop_sequences_longer_than_the_cap_are_refused() -> None:
    assert stop_sequences(["x" * MAX_STOP_CHARS, ""]) == ("x" * MAX_STOP_CHARS,)
    with pytest.raises(InvalidRequest) as info:
        stop_sequences(["ok", "x" * (MAX_STOP_CHARS + 1)])
    assert info.value.param == "stop[1]"
    assert info.value.code == "string_above_max_length"
    with pytest.raises(InvalidRequest):
        stop_sequences("x" * (MAX_STOP_CHARS + 1))
