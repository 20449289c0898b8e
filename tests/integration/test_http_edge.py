"""The HTTP edge on the real worker: CORS, the ignored-params header, bounded body reads, usage rows.

One bridge with an API key, CORS for one origin, a single body-read slot and
short queue/idle timeouts, so each bound can be reached with a handful of
requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import orjson
import pytest

from bridge.api.middleware import BODY_READS
from bridge.api.validation import IGNORED_PARAMS_MAX_BYTES, IGNORED_PARAMS_MAX_NAMES
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until

ALICE: Final = "sk-alice-0123456789"
AUTH: Final = {"Authorization": f"Bearer {ALICE}"}
ORIGIN: Final = "https://app.example"
WAIT_S: Final = 30.0
IGNORED: Final = "x-codex-bridge-ignored-params"


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture(scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBridge]:
    settings = bridge_test_settings(
        tmp_path_factory.mktemp("edge"),
        **{
            "auth.api_keys": [f"alice:{ALICE}:4"],
            "auth.protect_models": False,
            "server.cors_origins": [ORIGIN],
            "server.max_concurrent_body_reads": 1,
            "codex.queue_timeout_s": 1.0,
            "codex.idle_timeout_s": 3.0,
        },
    )
    async with running_bridge(settings) as bridge:
        yield bridge


def cors_headers(response: aiohttp.ClientResponse) -> set[str]:
    return {name.lower() for name in response.headers if name.lower().startswith("access-control")}


def reply_text(body: bytes, *, stream: bool) -> str:
    if not stream:
        return str(orjson.loads(body)["choices"][0]["message"]["content"])
    frames = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert frames[-1] == b"[DONE]"
    chunks = [orjson.loads(frame) for frame in frames[:-1]]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# --- CORS (issue 9, item 10) ---------------------------------------------------------------


async def test_preflight_from_an_allowed_origin_is_answered_without_a_key(
    edge: RunningBridge,
) -> None:
    asked = "authorization, content-type, x-stainless-os"
    async with (
        aiohttp.ClientSession() as http,
        http.options(
            f"{edge.base_url}/v1/chat/completions",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": asked,
            },
        ) as r,
    ):
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert r.headers["Access-Control-Allow-Methods"] == "POST"
        assert r.headers["Access-Control-Allow-Headers"] == asked
        assert int(r.headers["Access-Control-Max-Age"]) > 0
        assert "Origin" in r.headers["Vary"]
        assert "Access-Control-Allow-Credentials" not in r.headers
        assert "WWW-Authenticate" not in r.headers


async def test_responses_to_an_allowed_origin_expose_the_headers_clients_read(
    edge: RunningBridge,
) -> None:
    headers = {**AUTH, "Origin": ORIGIN}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{edge.base_url}/v1/chat/completions",
            json=chat_body("[[reply=cors]]", temperature=0.5),
            headers=headers,
        ) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            exposed = {h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
            assert {
                "x-request-id",
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                IGNORED,
                "retry-after",
                "openai-processing-ms",
            } <= exposed
            assert "Origin" in r.headers["Vary"]
        async with http.post(
            f"{edge.base_url}/v1/chat/completions",
            json=chat_body("[[reply=streamed]]", stream=True),
            headers=headers,
        ) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            await r.read()
        # A page can read why it was refused, too.
        async with http.post(
            f"{edge.base_url}/v1/chat/completions", json=chat_body("x"), headers={"Origin": ORIGIN}
        ) as r:
            assert r.status == 401
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_other_origins_get_no_cors_headers(edge: RunningBridge) -> None:
    evil = "https://evil.example"
    async with aiohttp.ClientSession() as http:
        async with http.options(
            f"{edge.base_url}/v1/chat/completions",
            headers={"Origin": evil, "Access-Control-Request-Method": "POST"},
        ) as r:
            assert r.status == 403
            assert (await r.json())["error"]["type"] == "permission_error"
            assert not cors_headers(r)
        async with http.post(
            f"{edge.base_url}/v1/chat/completions",
            json=chat_body("[[reply=no cors]]"),
            headers={**AUTH, "Origin": evil},
        ) as r:
            assert r.status == 200
            assert not cors_headers(r)


# --- x-codex-bridge-ignored-params (issue 8, item 11) --------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_hostile_unknown_field_names_never_break_the_response_or_the_keep_alive_connection(
    edge: RunningBridge, stream: bool
) -> None:
    hostile = chat_body("[[reply=still fine]]", stream=stream)
    hostile["bad\r\nX-Injected: 1"] = 1
    hostile.update({f"field_{i:04d}": i for i in range(5000)})
    connections = 0

    async def on_create(*_: Any) -> None:
        nonlocal connections
        connections += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as http:
        async with http.post(
            f"{edge.base_url}/v1/chat/completions", data=orjson.dumps(hostile), headers=AUTH
        ) as r:
            assert r.status == 200
            assert "X-Injected" not in r.headers
            header = r.headers[IGNORED]
            names = header.split(",")
            assert len(names) <= IGNORED_PARAMS_MAX_NAMES + 1
            assert len(header.encode()) <= IGNORED_PARAMS_MAX_BYTES + 16
            assert names[0] == "field_0000"
            assert names[-1] == f"+{5001 - (len(names) - 1)} more"
            body = await r.read()
            assert reply_text(body, stream=stream) == "still fine"
        # The next request on the same connection reads a clean response.
        async with http.post(
            f"{edge.base_url}/v1/chat/completions",
            json=chat_body("[[reply=next one]]"),
            headers=AUTH,
        ) as r:
            assert r.status == 200
            assert (await r.json())["choices"][0]["message"]["content"] == "next one"
    assert connections == 1


# --- bounded body reads, after authentication (issue 8, item 13) ---------------------------


async def read_status(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    return int(line.split()[1])


async def test_body_reads_past_the_bound_get_503_and_keyless_bodies_are_never_read(
    edge: RunningBridge,
) -> None:
    port = int(edge.base_url.rsplit(":", 1)[1])
    body = orjson.dumps(chat_body("[[reply=slow upload]]"))
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {ALICE}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reads = edge.app[BODY_READS]
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
    keyless_reader, keyless_writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # A keyed upload that stalls half-way holds the only body-read slot.
        slow_writer.write(head + body[:10])
        await slow_writer.drain()
        await wait_until(lambda: reads.in_use == 1, timeout=WAIT_S)

        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{edge.base_url}/v1/chat/completions",
                json=chat_body("[[reply=queued]]"),
                headers=AUTH,
            ) as r,
        ):
            assert r.status == 503
            assert int(r.headers["Retry-After"]) >= 1
            assert (await r.json())["error"]["code"] == "server_busy"

        # Without a key, a 10 MB body is refused from the headers alone.
        keyless_writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10000000\r\n"
            b"Connection: close\r\n\r\n"
        )
        await keyless_writer.drain()
        async with asyncio.timeout(WAIT_S):
            assert await read_status(keyless_reader) == 401
        assert reads.in_use == 1

        # The stalled upload completes and is served.
        slow_writer.write(body[10:])
        await slow_writer.drain()
        async with asyncio.timeout(WAIT_S):
            assert await read_status(slow_reader) == 200
            assert b"slow upload" in await slow_reader.read()
    finally:
        for writer in (slow_writer, keyless_writer):
            writer.close()
    await wait_until(lambda: reads.in_use == 0, timeout=WAIT_S)


# --- every turn leaves a usage row (issue 10, item 3b) -------------------------------------


async def model_requests(http: aiohttp.ClientSession, base_url: str, since: int) -> int:
    async with http.get(
        f"{base_url}/v1/usage", params={"start_time": str(since)}, headers=AUTH
    ) as r:
        assert r.status == 200
        page = await r.json()
    return sum(
        res["num_model_requests"]
        for bucket in page["data"]
        for res in bucket["results"]
        if res["model"] == DEMO_MODEL_ID
    )


async def wait_for_rows(http: aiohttp.ClientSession, base_url: str, since: int, count: int) -> None:
    async with asyncio.timeout(WAIT_S):
        while await model_requests(http, base_url, since) < count:  # noqa: ASYNC110 - polls the ledger
            await asyncio.sleep(0.1)


async def test_a_client_that_disconnects_mid_stream_leaves_a_usage_row(edge: RunningBridge) -> None:
    since = int(time.time()) - 60
    async with aiohttp.ClientSession() as http:
        before = await model_requests(http, edge.base_url, since)
        response = await http.post(
            f"{edge.base_url}/v1/chat/completions",
            json=chat_body("[[words=200]] [[delay_ms=50]]", stream=True),
            headers=AUTH,
        )
        assert response.status == 200
        received = b""
        while b'"content":"w1 "' not in received:  # the model is streaming now
            received += await response.content.readany()
        response.close()  # the client hangs up mid-stream
        await wait_for_rows(http, edge.base_url, since, before + 1)


async def test_a_turn_cut_by_its_deadline_leaves_a_usage_row(edge: RunningBridge) -> None:
    since = int(time.time()) - 60
    async with aiohttp.ClientSession() as http:
        before = await model_requests(http, edge.base_url, since)
        async with http.post(
            f"{edge.base_url}/v1/chat/completions",
            json=chat_body("[[words=10]] [[hang_after=2]]"),
            headers=AUTH,
        ) as r:
            assert r.status == 504
        await wait_for_rows(http, edge.base_url, since, before + 1)
