"""AccountState: sparse rate-limit updates merge, exhausted windows give the reset time."""

from __future__ import annotations

from bridge.codex.account import AccountState
from bridge.codex.errors import error_from_codex

NOW = 1_800_000_000


def snapshot(**windows: object) -> dict[str, object]:
    return {"limitId": "codex", "planType": None, **windows}


def test_sparse_rate_limit_update_keeps_the_windows_it_does_not_mention() -> None:
    account = AccountState()
    account.read_limits(
        {
            "rateLimits": snapshot(
                primary={"usedPercent": 20, "windowDurationMins": 300, "resetsAt": NOW + 60},
                secondary={"usedPercent": 5, "windowDurationMins": 10080, "resetsAt": NOW + 600},
                planType="plus",
            )
        }
    )
    account.notification(
        "account/rateLimits/updated",
        {"rateLimits": snapshot(primary={"usedPercent": 35, "resetsAt": NOW + 60}, secondary=None)},
    )
    windows = {w.window: w for w in account.windows()}
    assert windows["primary"].used_percent == 35
    assert windows["secondary"].used_percent == 5  # null in the update: unknown, not cleared
    assert account.plan == "plus"


def test_usage_limit_error_counts_retry_after_down_to_the_exhausted_window() -> None:
    account = AccountState(plan="pro")
    account.merge_limits(
        snapshot(
            primary={"usedPercent": 100, "windowDurationMins": 300, "resetsAt": NOW + 900},
            secondary={"usedPercent": 60, "windowDurationMins": 10080, "resetsAt": NOW + 9000},
        )
    )
    assert account.usage_reset_at(NOW) == NOW + 900
    error = error_from_codex(
        {"message": "try again at 9:20 PM", "codexErrorInfo": "usageLimitExceeded"},
        account=account,
    )
    assert error.status == 429 and error.code == "usage_limit_reached"
    assert "pro plan" in error.message


def test_signed_out_only_when_the_provider_needs_the_account() -> None:
    custom = AccountState()
    custom.read({"account": None, "requiresOpenaiAuth": False})
    assert not custom.signed_out and custom.reason is None
    openai = AccountState()
    openai.read({"account": None, "requiresOpenaiAuth": True})
    assert openai.signed_out and openai.reason == "codex_not_signed_in"
    openai.notification("account/updated", {"authMode": "apikey", "planType": None})
    assert not openai.signed_out and openai.account_type == "apiKey"
