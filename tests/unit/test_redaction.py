"""Credentials in URLs stay out of the log lines and out of `check-config`."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from bridge.cli import main
from bridge.ops.logging import configure_logging

PASSWORD = "s3cret-redis-pw"
STORE_URL = f"redis://:{PASSWORD}@redis:6379/0"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        yield out
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_store_url_password_is_not_logged_when_the_store_is_unreachable(
    log_lines: io.StringIO,
) -> None:
    # The very line `_store_ctx` writes, and a stdlib logger quoting the URL in its message.
    structlog.get_logger("bridge.app").warning(
        "response store unreachable at startup", url=STORE_URL
    )
    logging.getLogger("redis").error("cannot reach %s", f"rediss://admin:{PASSWORD}@r:6380/1")
    lines = [orjson.loads(line) for line in log_lines.getvalue().splitlines()]
    assert len(lines) == 2
    assert PASSWORD not in log_lines.getvalue()
    assert lines[0]["url"] == "redis://[redacted]@redis:6379/0"
    assert "rediss://[redacted]@r:6380/1" in lines[1]["msg"]


def test_check_config_prints_store_url_and_otlp_endpoint_without_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_STORE_URL", STORE_URL)
    monkeypatch.setenv(
        "BRIDGE_OTLP_ENDPOINT", "https://tracer:otlp-token-42@collector:4318/v1/traces"
    )
    assert main(["check-config"]) == 0
    printed = capsys.readouterr().out
    assert PASSWORD not in printed and "otlp-token-42" not in printed
    effective = orjson.loads(printed)
    assert effective["store"]["url"] == "redis://[redacted]@redis:6379/0"
    assert effective["tracing"]["otlp_endpoint"] == "https://[redacted]@collector:4318/v1/traces"
