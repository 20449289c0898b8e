"""Production behaviour on the real worker: API keys, ForwardAuth, admission, disconnects, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until

ALICE = "sk-alice-0123456789"
BOB = "sk-bob-0123456789"
WAIT_S = 30.0


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture(scope="module")
async def keyed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBridge]:
    settings = bridge_test_settings(
        tmp_path_factory.mktemp("keyed"),
        **{
            "auth.api_keys": [f"alice:{ALICE}:2", f"bob:{BOB}"],
            "auth.trusted_proxies": ["127.0.0.1/32"],
        },
    )
    async with running_bridge(settings) as bridge:
        yield bridge


PROTECTED = [
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", f"/v1/models/{DEMO_MODEL_ID}"),
    ("GET", "/auth/verify"),
    ("POST", "/auth/verify"),
]


async def test_missing_or_wrong_key_is_401_on_every_protected_route(keyed: RunningBridge) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path in PROTECTED:
            for headers in ({}, {"Authorization": "Bearer sk-wrong-0000000000"}):
                async with http.request(
                    method, keyed.base_url + path, json=chat_body("x"), headers=headers
                ) as r:
                    assert r.status == 401, (method, path, headers)
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    error = (await r.json())["error"]
                    assert set(error) == {"message", "type", "param", "code"}
                    assert "sk-wrong-0000000000" not in error["message"]
                    if headers:
                        assert error["code"] == "invalid_api_key"


async def test_right_key_is_served_and_forward_auth_names_the_key(keyed: RunningBridge) -> None:
    auth = {"Authorization": f"Bearer {BOB}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{keyed.base_url}/v1/chat/completions", json=chat_body("[[reply=ok]]"), headers=auth
        ) as r:
            assert r.status == 200
            assert (await r.json())["choices"][0]["message"]["content"] == "ok"
        async with http.get(f"{keyed.base_url}/v1/models", headers=auth) as r:
            assert r.status == 200
        async with http.get(f"{keyed.base_url}/auth/verify", headers=auth) as r:
            assert r.status == 204
            assert r.headers["X-Bridge-Key-Name"] == "bob"
            assert len(r.headers["X-Bridge-Key-Id"]) == 8
            assert BOB not in str(r.headers)
        async with http.get(f"{keyed.base_url}/healthz") as r:
            assert r.status == 200


async def test_identity_header_from_a_trusted_proxy_is_believed(keyed: RunningBridge) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{keyed.base_url}/v1/chat/completions",
            json=chat_body("[[reply=via traefik]]"),
            headers={"X-Bridge-Key-Name": "bob"},
        ) as r:
            assert r.status == 200


async def test_identity_header_naming_an_unknown_key_is_401_and_a_known_one_keeps_its_cap(
    keyed: RunningBridge,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{keyed.base_url}/v1/chat/completions",
            json=chat_body("[[reply=nobody]]"),
            headers={"X-Bridge-Key-Name": "nobody-at-all"},
        ) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert set((await r.json())["error"]) == {"message", "type", "param", "code"}
        async with http.post(
            f"{keyed.base_url}/v1/chat/completions",
            json=chat_body("[[reply=alice]]"),
            headers={"X-Bridge-Key-Name": "alice"},
        ) as r:
            assert r.status == 200
            assert r.headers["x-ratelimit-limit-requests"] == "2"  # alice's cap applies


async def test_forward_auth_ignores_the_identity_header_and_wants_the_bearer_token(
    keyed: RunningBridge,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{keyed.base_url}/auth/verify", headers={"X-Bridge-Key-Name": "bob"}
        ) as r:
            assert r.status == 401
            assert "X-Bridge-Key-Name" not in r.headers
        async with http.get(
            f"{keyed.base_url}/auth/verify",
            headers={"Authorization": f"Bearer {BOB}", "X-Bridge-Key-Name": "alice"},
        ) as r:
            assert r.status == 204
            assert r.headers["X-Bridge-Key-Name"] == "bob"


async def test_forward_auth_refuses_everyone_when_no_keys_are_configured(
    bridge: RunningBridge,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.base_url}/auth/verify") as r:
            assert r.status == 403
            error = (await r.json())["error"]
            assert "verify_without_keys" in error["message"]
            assert "X-Bridge-Key-Name" not in r.headers


async def test_per_key_concurrency_limit_queues_and_reports_rate_limit_headers(
    keyed: RunningBridge,
) -> None:
    auth = {"Authorization": f"Bearer {ALICE}"}
    async with aiohttp.ClientSession() as http:

        async def one() -> tuple[int, str | None]:
            async with http.post(
                f"{keyed.base_url}/v1/chat/completions",
                json=chat_body("[[words=3]] [[delay_ms=50]]"),
                headers=auth,
            ) as r:
                await r.read()
                return r.status, r.headers.get("x-ratelimit-limit-requests")

        results = await asyncio.gather(*(one() for _ in range(5)))
    assert results == [(200, "2")] * 5


async def test_burst_of_32_against_a_cap_of_4_queues_and_all_succeed(tmp_path: Path) -> None:
    settings = bridge_test_settings(
        tmp_path, **{"codex.max_turns_per_worker": 4, "codex.queue_limit": 64}
    )
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        peak = 0

        async def one(i: int) -> int:
            nonlocal peak
            async with http.post(
                f"{bridge.base_url}/v1/chat/completions",
                json=chat_body(f"[[reply=n{i}]] [[delay_ms=20]]"),
            ) as r:
                peak = max(peak, bridge.pool.active_turns)
                body = await r.json()
                assert body["choices"][0]["message"]["content"] == f"n{i}"
                return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(32)))
        assert statuses == [200] * 32
        assert peak <= 4


async def test_excess_over_a_full_queue_gets_429_with_retry_after(tmp_path: Path) -> None:
    settings = bridge_test_settings(
        tmp_path, **{"codex.max_turns_per_worker": 2, "codex.queue_limit": 2}
    )
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:

        async def one() -> tuple[int, dict[str, Any], str | None]:
            async with http.post(
                f"{bridge.base_url}/v1/chat/completions",
                json=chat_body("[[words=10]] [[delay_ms=100]]"),
            ) as r:
                return r.status, await r.json(), r.headers.get("Retry-After")

        results = await asyncio.gather(*(one() for _ in range(8)))
    ok = [r for r in results if r[0] == 200]
    limited = [r for r in results if r[0] == 429]
    assert len(ok) == 4  # 2 running + 2 queued
    assert len(limited) == 4
    for _, body, retry_after in limited:
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert retry_after is not None and int(retry_after) >= 1


async def test_client_disconnect_mid_stream_interrupts_the_turn_and_frees_its_slot(
    bridge: RunningBridge,
) -> None:
    aborted_before = bridge.demo.aborted_streams
    busy_before = bridge.pool.active_turns
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{bridge.base_url}/v1/chat/completions",
            json=chat_body("[[words=200]] [[delay_ms=100]]", stream=True),
        )
        assert response.status == 200
        received = b""
        while b'"content":"w1 "' not in received:  # the model is streaming now
            received += await response.content.readany()
        assert bridge.pool.active_turns == busy_before + 1
        response.close()  # the client hangs up mid-stream
    # Interrupting the turn makes Codex drop its model request (NOTES S5).
    await wait_until(
        lambda: (
            bridge.pool.active_turns == busy_before and bridge.demo.aborted_streams > aborted_before
        ),
        timeout=WAIT_S,
    )


async def test_metrics_expose_the_documented_series_with_bounded_labels(
    bridge: RunningBridge,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{bridge.base_url}/v1/chat/completions", json=chat_body("[[reply=m]]")
        ) as r:
            assert r.status == 200
        async with http.get(f"{bridge.base_url}/metrics") as r:
            assert r.status == 200
            text = await r.text()
    for series in (
        'codex_bridge_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
        "codex_bridge_http_request_duration_seconds_bucket",
        'codex_bridge_time_to_first_token_seconds_bucket{endpoint="chat"',
        'codex_bridge_tokens_total{kind="completion",model="codex-demo"}',
        "codex_bridge_workers_ready 1.0",
        'codex_bridge_workers{state="ready"} 1.0',
        "codex_bridge_inflight_turns",
        "codex_bridge_queue_depth 0.0",
        "codex_bridge_queue_wait_seconds_bucket",
        "codex_bridge_turn_duration_seconds_bucket",
        "codex_bridge_build_info{",
        "process_cpu_seconds_total",
    ):
        assert series in text, series
    assert "req_" not in text  # no request ids as labels


async def test_usage_ledger_totals_per_key_and_model_by_day(keyed: RunningBridge) -> None:
    start = int(time.time()) - 60
    auth = {"Authorization": f"Bearer {BOB}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(
                f"{keyed.base_url}/v1/chat/completions",
                json=chat_body("[[reply=a b c]] [[cached=2]]"),
                headers=auth,
            ) as r:
                assert r.status == 200
        async with http.get(
            f"{keyed.base_url}/v1/usage", params={"start_time": str(start)}, headers=auth
        ) as r:
            assert r.status == 200
            page = await r.json()
        async with http.get(f"{keyed.base_url}/v1/usage", params={"start_time": "1"}) as r:
            assert r.status == 401
    assert page["object"] == "page"
    results = [res for bucket in page["data"] for res in bucket["results"]]
    assert {res["api_key_name"] for res in results} == {"bob"}  # a key sees its own usage
    bob = [res for res in results if res["model"] == DEMO_MODEL_ID]
    assert sum(res["num_model_requests"] for res in bob) >= 2
    assert sum(res["output_tokens"] for res in bob) >= 6
    assert sum(res["input_cached_tokens"] for res in bob) >= 4


async def test_usage_without_parameters_answers_today_for_the_callers_key(
    keyed: RunningBridge,
) -> None:
    auth = {"Authorization": f"Bearer {BOB}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{keyed.base_url}/v1/chat/completions", json=chat_body("[[reply=today]]"), headers=auth
        ) as r:
            assert r.status == 200
        async with http.get(f"{keyed.base_url}/v1/usage", headers=auth) as r:
            assert r.status == 200
            page = await r.json()
    assert len(page["data"]) == 1  # one day bucket: today, UTC
    bucket = page["data"][0]
    assert bucket["start_time"] % 86_400 == 0
    assert bucket["start_time"] <= time.time() < bucket["start_time"] + 86_400
    assert {res["api_key_name"] for res in bucket["results"]} == {"bob"}
    assert sum(res["num_model_requests"] for res in bucket["results"]) >= 1


@pytest.mark.parametrize("value", ["\u00b2", "1" + "0" * 22, "-5", "1e3", " 7", "\u0661"])
async def test_usage_time_parameters_that_are_not_unix_seconds_are_400(
    keyed: RunningBridge, value: str
) -> None:
    auth = {"Authorization": f"Bearer {BOB}"}
    async with aiohttp.ClientSession() as http:
        for name in ("start_time", "end_time"):
            async with http.get(
                f"{keyed.base_url}/v1/usage", params={name: value}, headers=auth
            ) as r:
                assert r.status == 400, (name, value)
                error = (await r.json())["error"]
                assert error["param"] == name
