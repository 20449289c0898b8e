"""The listener check at startup: refuse or warn only when no API keys guard the listener."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.server import listener_allowed
from tests.harness import bridge_test_settings


def _warnings(entries: list[dict[str, object]]) -> list[str]:
    return [str(e["event"]) for e in entries if e["log_level"] in ("warning", "error")]


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "192.0.2.10"])
def test_no_warning_about_missing_keys_when_keys_are_configured(tmp_path: Path, host: str) -> None:
    settings = bridge_test_settings(tmp_path, **{"server.host": host})
    with capture_logs() as entries:
        assert listener_allowed(settings, keys_configured=True)
    assert not [w for w in _warnings(entries) if "API keys" in w]


def test_remote_listener_without_keys_is_refused_or_warned_about(tmp_path: Path) -> None:
    refused = bridge_test_settings(tmp_path, **{"server.host": "192.0.2.10"})
    with capture_logs() as entries:
        assert not listener_allowed(refused, keys_configured=False)
    assert _warnings(entries) == ["refusing to listen beyond loopback without API keys"]
    allowed = bridge_test_settings(
        tmp_path, **{"server.host": "192.0.2.10", "auth.allow_anonymous_remote": True}
    )
    with capture_logs() as entries:
        assert listener_allowed(allowed, keys_configured=False)
    assert _warnings(entries) == [
        "listening beyond loopback without API keys: anyone who can reach it may use it"
    ]


def test_loopback_listener_without_keys_warns_once(tmp_path: Path) -> None:
    settings = bridge_test_settings(tmp_path)
    with capture_logs() as entries:
        assert listener_allowed(settings, keys_configured=False)
    assert _warnings(entries) == ["no API keys configured: every local caller is served"]
