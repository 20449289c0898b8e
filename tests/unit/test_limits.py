"""OutputLimiter: stop sequences across delta boundaries and exact token cuts."""

from __future__ import annotations

from bridge.api.limits import OutputLimiter
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
