"""structlog JSON lines on stdout (journald-friendly), with secrets and content kept out.

Every line is one JSON object with `timestamp`, `level`, `msg` and whatever
the request bound (request id, worker). A redaction processor masks
credential-like keys always and drops message content unless
`log_content` is on. stdlib loggers (aiohttp, asyncio) go through the same
pipeline. URLs anywhere in a line lose their credentials (`redact_url`):
a `redis://:password@host` in `store.url` must never reach the journal.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import orjson
import structlog

_SECRET_KEYS: Final = (
    "authorization",
    "api_key",
    "apikey",
    "token",
    "password",
    "secret",
    "cookie",
)
_CONTENT_KEYS: Final = frozenset({"prompt", "content", "text", "messages", "input", "delta"})
REDACTED: Final = "[redacted]"
# `scheme://userinfo@`: the whole userinfo goes, a user name can be a token (`https://TOKEN@host`);
# up to the netloc's last `@`, as urlsplit (and so redis-py) reads an unescaped `@` in a password.
_URL_USERINFO: Final = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@")
# `?password=...` (redis-py reads it from the query too), `&api_key=...`, `&token=...`.
_URL_SECRET_PARAM: Final = re.compile(
    r"([?&][^=&#\s]*(?:" + "|".join(_SECRET_KEYS) + r")[^=&#\s]*=)[^&#\s]*", re.IGNORECASE
)


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_KEYS)


def redact_url(text: str) -> str:
    """`text` with the credentials of every URL in it replaced: userinfo and secret query values."""
    if "://" not in text:
        return text
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    return _URL_SECRET_PARAM.sub(rf"\1{REDACTED}", text)


def make_redactor(log_content: bool) -> Any:
    def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event):
            if _is_secret(key) and not key.endswith("_tokens"):
                event[key] = REDACTED
            elif key in _CONTENT_KEYS and not log_content:
                del event[key]
            elif isinstance(event[key], str):
                event[key] = redact_url(event[key])
        return event

    return redact


def _serialize(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(
    level: str, *, log_content: bool = False, stream: TextIO | None = None
) -> None:
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        make_redactor(log_content),
    ]
    renderer: list[Any] = [
        structlog.processors.dict_tracebacks,
        structlog.processors.EventRenamer("msg"),
        structlog.processors.JSONRenderer(serializer=_serialize),
    ]
    out = stream or sys.stdout
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO) if numeric < logging.INFO else numeric)
