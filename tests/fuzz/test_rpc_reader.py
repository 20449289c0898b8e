"""Property-based fuzzing of the JSON-RPC reader (`bridge/worker/rpc.py`) with arbitrary input.

Whatever a worker writes to stdout (random bytes, JSON that is not an
object, objects with ids, methods and error fields of every wrong type,
lines over the length limit, all cut into arbitrary chunks), the reader
never dies: the answers to pending requests that follow the garbage are
still delivered, every server request in the garbage is answered, and
EOF closes the connection cleanly.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.worker.rpc import ConnectionClosed, RpcConnection, RpcError

# A small line limit, so oversized lines are cheap to generate; the reader's
# resync logic is the same at 64 MiB.
LINE_LIMIT: Final = 2048
PENDING: Final = 4
# Generous for a busy box: the reader only has to get through a few KB.
DELIVERY_TIMEOUT_S: Final = 5.0
# Garbage ids never collide with the pending requests' integer ids (1..PENDING).
FOREIGN_ID_BASE: Final = 1_000_000


class _Quiet:
    """A logger that swallows the reader's warnings about the garbage it skips."""

    def _drop(self, *args: Any, **kwargs: Any) -> None:
        return None

    debug = info = warning = error = exception = _drop


class _Writer:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.lines.extend(orjson.loads(line) for line in data.splitlines() if line)

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    def is_closing(self) -> bool:
        return False


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
foreign_ids = (
    st.none()
    | st.booleans()
    | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=FOREIGN_ID_BASE)
    | st.integers(max_value=0)
    | st.lists(st.integers(), max_size=2)
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "id": foreign_ids,
        "method": st.text(max_size=12) | json_values,
        "params": json_values,
        "result": json_values,
        "error": json_values,
        "jsonrpc": st.just("2.0") | json_values,
    },
)


def _line(value: Any) -> bytes:
    # The stdlib encoder: it also writes integers past 64 bits, which orjson refuses to read.
    return json.dumps(value).encode() + b"\n"


garbage_lines = st.one_of(
    # Arbitrary bytes up to a newline (invalid UTF-8, NULs, half a JSON document).
    st.binary(max_size=64).map(lambda raw: raw.replace(b"\n", b"") + b"\n"),
    # Valid JSON that is not an object.
    st.one_of(st.lists(json_values, max_size=3), st.integers(), st.text(), st.none()).map(_line),
    # Objects of every shape: unknown ids, non-string methods, malformed errors, notifications.
    messages.map(_line),
    # A line over the limit, then the reader must find the next newline.
    st.integers(min_value=LINE_LIMIT + 1, max_value=3 * LINE_LIMIT).map(
        lambda size: b"x" * size + b"\n"
    ),
    st.just(b"\n"),
)
answers = st.one_of(
    json_values.map(lambda result: {"result": result}),
    # Error objects, well-formed or not: the request raises RpcError either way.
    json_values.filter(lambda error: error is not None).map(lambda error: {"error": error}),
)


def _is_server_request(raw: bytes) -> bool:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(message, dict) and isinstance(message.get("method"), str) and ("id" in message)
    )


async def _scenario(
    before: list[list[bytes]],
    replies: list[dict[str, Any]],
    trailing: bytes,
    cut_points: list[int],
) -> None:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    writer = _Writer()
    notified: list[str] = []

    async def on_request(method: str, params: dict[str, Any]) -> Any:
        return {"declined": method}

    conn = RpcConnection(
        reader,
        writer,
        on_notification=lambda method, params: notified.append(method),
        on_server_request=on_request,
        logger=_Quiet(),
        name="fuzz",
    )
    conn.start()
    requests = [
        asyncio.create_task(conn.request("ping", {"i": i}, timeout=DELIVERY_TIMEOUT_S))
        for i in range(PENDING)
    ]
    await asyncio.sleep(0)  # every request registered its id before any input arrives
    stream = b"".join(
        b"".join(garbage) + _line({"id": i + 1, **reply})
        for i, (garbage, reply) in enumerate(zip(before, replies, strict=True))
    )
    stream += trailing
    cuts = sorted({cut for cut in cut_points if 0 < cut < len(stream)})
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        reader.feed_data(stream[start:end])
        await asyncio.sleep(0)
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    for reply, outcome in zip(replies, outcomes, strict=True):
        if "error" in reply:
            assert isinstance(outcome, RpcError), outcome
        else:
            assert not isinstance(outcome, BaseException), outcome
            assert outcome == reply["result"]
    asked = sum(_is_server_request(line) for garbage in before for line in garbage)
    async with asyncio.timeout(DELIVERY_TIMEOUT_S):
        while len(writer.lines) < PENDING + asked:  # noqa: ASYNC110 - answers run in tasks
            await asyncio.sleep(0)
    assert len(writer.lines) == PENDING + asked
    reader.feed_eof()
    async with asyncio.timeout(DELIVERY_TIMEOUT_S):
        await conn.wait_closed()
    try:
        await conn.request("after-eof", None, timeout=DELIVERY_TIMEOUT_S)
    except ConnectionClosed:
        pass
    else:
        raise AssertionError("a request after EOF must fail with ConnectionClosed")


@settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    before=st.lists(st.lists(garbage_lines, max_size=5), min_size=PENDING, max_size=PENDING),
    replies=st.lists(answers, min_size=PENDING, max_size=PENDING),
    # Trailing bytes without a newline: a partial last line before EOF.
    trailing=st.binary(max_size=40).map(lambda raw: raw.replace(b"\n", b"")),
    cut_points=st.lists(st.integers(min_value=1, max_value=4 * LINE_LIMIT), max_size=8),
)
def test_reader_survives_arbitrary_input_and_still_delivers_the_answers_after_it(
    before: list[list[bytes]], replies: list[dict[str, Any]], trailing: bytes, cut_points: list[int]
) -> None:
    asyncio.run(_scenario(before, replies, trailing, cut_points))
