"""The Codex account, end to end with the real Codex binary and the demo model (offline).

`codex-bridge login/logout/account` against the bridge's Codex home; a
daemon whose provider needs the account (`demo.codex_account`) while signed
out, after an API-key sign-in beside it, and with a refused or plan-limited
key; usage limits and rate-limit windows from the demo's backend-shaped
answers (`[[usage_limit=S]]`, `[[rate_limits=P,S]]`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from bridge import signin
from bridge.appkeys import ACCOUNT, ACCOUNTS
from bridge.config import Settings
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until
from tests.processes import bridge_argv, run_to_exit

CLI_TIMEOUT_S: Final = 60.0
# Far below the minute and more that a signed-out Codex spends retrying the OpenAI endpoint.
FAST_ANSWER_S: Final = 20.0
RESTART_TIMEOUT_S: Final = 30.0


async def cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    return await run_to_exit(
        bridge_argv(*args), env={**os.environ, **(env or {})}, timeout_s=CLI_TIMEOUT_S, stdin=stdin
    )


def account_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return bridge_test_settings(
        tmp_path / "home",
        **{"demo.codex_account": True, "codex.health_interval_s": 0.5, **overrides},
    )


async def chat(
    bridge: RunningBridge, text: str, *, stream: bool = False
) -> tuple[int, dict[str, str], Any]:
    body = {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    timeout = aiohttp.ClientTimeout(total=FAST_ANSWER_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
            raw = await resp.read()
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                payload = raw.decode()
            return resp.status, dict(resp.headers), payload


async def get_json(bridge: RunningBridge, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.base_url}{path}") as resp:
            return resp.status, await resp.json(content_type=None)


async def metrics_text(bridge: RunningBridge) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.base_url}/metrics") as resp:
            return await resp.text()


# -- the CLI ------------------------------------------------------------------------------


async def test_login_with_api_key_then_account_shows_api_key_sign_in_until_logout(
    tmp_path: Path,
) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    code, out, err = await cli("account", "--json", *state)
    assert code == 0, err
    assert orjson.loads(out)["signed_in"] is False

    code, out, err = await cli("login", "--with-api-key", *state, stdin=b"sk-test-cli-0123456789\n")
    assert code == 0, err
    assert "Signed in with an API key" in out
    assert (tmp_path / "state" / "codex-home" / "auth.json").is_file()

    code, out, err = await cli("account", "--json", *state)
    assert code == 0, err
    shown = orjson.loads(out)
    assert shown["signed_in"] is True
    assert shown["type"] == "apiKey"
    assert shown["codex_home"] == str(tmp_path / "state" / "codex-home")
    assert "sk-test-cli" not in out  # the key itself is never shown

    code, out, err = await cli("logout", *state)
    assert code == 0, err
    code, out, err = await cli("account", *state)
    assert code == 0, err
    assert "not signed in" in out and "codex-bridge login" in out


async def test_login_refuses_an_empty_key_on_stdin(tmp_path: Path) -> None:
    code, _, err = await cli(
        "login", "--with-api-key", "--state-dir", str(tmp_path / "state"), stdin=b"\n"
    )
    assert code == 2
    assert "no API key on stdin" in err


async def test_device_auth_fails_fast_with_guidance_when_auth_server_is_unreachable(
    tmp_path: Path,
) -> None:
    # A proxy on a closed loopback port: unreachable whether or not the host is online.
    unreachable = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    code, _, err = await cli(
        "login", "--device-auth", "--state-dir", str(tmp_path / "state"), env=unreachable
    )
    assert code == 1
    assert "device sign-in could not start" in err
    assert "--with-api-key" in err
    assert "Traceback" not in err


async def test_device_auth_wait_ends_with_cancellation_when_interrupted() -> None:
    class FakeConn:
        async def wait_closed(self) -> None:
            await asyncio.Event().wait()

    session = signin.Session(FakeConn(), Path("/nonexistent"), asyncio.Queue())  # type: ignore[arg-type]
    default = signal.getsignal(signal.SIGINT)
    waiting = asyncio.create_task(signin._wait_for_login(session, "login-1", timeout_s=60))
    # Ctrl-C only once the wait owns SIGINT (else it would interrupt pytest itself).
    await wait_until(lambda: signal.getsignal(signal.SIGINT) is not default, timeout=10)
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(waiting, timeout=10) is None
    assert signal.getsignal(signal.SIGINT) is default  # handed back


# -- the daemon ---------------------------------------------------------------------------


async def test_signed_out_daemon_answers_503_naming_login_and_readyz_says_why(
    tmp_path: Path,
) -> None:
    async with running_bridge(account_settings(tmp_path)) as bridge:
        await wait_until(lambda: bridge.app[ACCOUNT].known, timeout=RESTART_TIMEOUT_S)
        status, ready = await get_json(bridge, "/readyz")
        assert status == 503
        assert ready["reason"] == "codex_not_signed_in"
        assert "codex-bridge login" in ready["message"]
        assert ready["account"]["signed_in"] is False

        started = time.monotonic()
        status, headers, body = await chat(bridge, "hello")
        assert status == 503
        assert body["error"]["code"] == "codex_not_signed_in"
        assert "codex-bridge login" in body["error"]["message"]
        assert headers.get("x-should-retry") == "false"
        assert time.monotonic() - started < FAST_ANSWER_S
        assert not bridge.demo.requests  # nothing reached the model

        status, _, body = await chat(bridge, "hello", stream=True)
        assert status == 503
        assert body["error"]["code"] == "codex_not_signed_in"

        text = await metrics_text(bridge)
        assert 'codex_bridge_account_signed_in{account="default"} 0.0' in text
        assert (
            'codex_bridge_account_usable{account="default",reason="codex_not_signed_in"} 0.0'
            in text
        )


async def test_daemon_serves_after_login_beside_it_without_a_restart(tmp_path: Path) -> None:
    settings = account_settings(tmp_path)
    async with running_bridge(settings) as bridge:
        await wait_until(lambda: bridge.app[ACCOUNT].signed_out, timeout=RESTART_TIMEOUT_S)
        assert await signin.login_api_key(settings, {}, "sk-test-beside-0123456789") == 0
        # The workers restart on the new auth.json and read the account again.
        await wait_until(
            lambda: bridge.app[ACCOUNT].account_type == "apiKey" and bridge.pool.ready_count,
            timeout=RESTART_TIMEOUT_S,
        )
        status, ready = await get_json(bridge, "/readyz")
        assert status == 200, ready
        assert ready["account"]["type"] == "apiKey"
        status, _, body = await chat(bridge, "[[reply=signed in]]")
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "signed in"


async def test_refused_credentials_answer_503_naming_login_and_show_in_readyz(
    tmp_path: Path,
) -> None:
    settings = account_settings(tmp_path)
    await signin.login_api_key(settings, {}, "sk-test-refused-0123456789")
    async with running_bridge(settings) as bridge:
        status, _, body = await chat(bridge, "hello")
        assert status == 503
        assert body["error"]["code"] == "upstream_unauthorized"
        assert "codex-bridge login" in body["error"]["message"]
        status, ready = await get_json(bridge, "/readyz")
        assert ready["reason"] == "codex_credentials_refused"
        assert ready["account"]["credentials_refused"] is True
        assert (
            'codex_bridge_account_usable{account="default",reason="codex_credentials_refused"} 0.0'
            in (await metrics_text(bridge))
        )


# -- usage limits and rate limits ---------------------------------------------------------


def _retry_after(headers: dict[str, str]) -> int:
    return int(headers["Retry-After"])


async def test_usage_limit_answers_429_with_retry_after_from_the_reset_time(
    bridge: RunningBridge,
) -> None:
    status, headers, body = await chat(bridge, "[[usage_limit=7200]]")
    assert status == 429
    error = body["error"]
    assert error["code"] == "usage_limit_reached"
    assert error["type"] == "insufficient_quota"
    assert "resets at" in error["message"]
    # From the window's resetsAt (the demo's now + 7200 s), not Codex's "try again at 9:20 PM".
    assert 7000 <= _retry_after(headers) <= 7200
    assert headers.get("x-should-retry") == "false"


async def test_usage_limit_on_a_stream_before_content_is_a_real_429(
    bridge: RunningBridge,
) -> None:
    status, headers, body = await chat(bridge, "[[usage_limit=600]]", stream=True)
    assert status == 429
    assert body["error"]["code"] == "usage_limit_reached"
    assert 400 <= _retry_after(headers) <= 600


async def test_plain_upstream_rate_limit_stays_a_retryable_429(bridge: RunningBridge) -> None:
    status, headers, body = await chat(bridge, "[[status=429]]")
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "x-should-retry" not in {k.lower() for k in headers}


async def test_limited_key_answers_usage_limit_429(tmp_path: Path) -> None:
    settings = account_settings(tmp_path)
    await signin.login_api_key(settings, {}, "sk-test-limited-0123456789")
    async with running_bridge(settings) as bridge:
        status, headers, body = await chat(bridge, "hello")
        assert status == 429
        assert body["error"]["code"] == "usage_limit_reached"
        assert 3000 <= _retry_after(headers) <= 3600


async def test_rate_limit_headers_become_gauges_and_usage_windows_but_not_public_readyz(
    fresh_bridge: RunningBridge,
) -> None:
    bridge = fresh_bridge
    status, _, _ = await chat(bridge, "[[rate_limits=30,10]]")
    assert status == 200
    text = await metrics_text(bridge)
    assert (
        'codex_bridge_rate_limit_used_percent{account="default",limit="codex",window="primary"} 30.0'
        in text
    )
    assert (
        'codex_bridge_rate_limit_used_percent{account="default",limit="codex",window="secondary"} 10.0'
        in text
    )
    assert (
        'codex_bridge_rate_limit_window_minutes{account="default",limit="codex",window="secondary"} 10080.0'
        in text
    )
    assert (
        'codex_bridge_rate_limit_resets_at_seconds{account="default",limit="codex",window="primary"}'
        in text
    )

    # A later, sparse update is merged into what was known.
    await chat(bridge, "[[rate_limits=55,12]]")
    status, usage = await get_json(bridge, "/v1/usage")
    assert status == 200
    windows = {(w["limit_id"], w["window"]): w for w in usage["rate_limits"]}
    assert windows["codex", "primary"]["used_percent"] == 55
    assert windows["codex", "primary"]["window_minutes"] == 300
    assert windows["codex", "secondary"]["used_percent"] == 12
    _, ready = await get_json(bridge, "/readyz")  # public: no key needed, so no limits
    assert "rate_limits" not in ready["account"]


async def test_serve_status_line_says_not_signed_in_until_login_beside_it(
    tmp_path: Path,
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    state = ["--state-dir", str(tmp_path / "state")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        "--demo",
        "--port",
        "0",
        *state,
        stdout=asyncio.subprocess.DEVNULL,
        env={
            **env,
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "BRIDGE_DEMO_CODEX_ACCOUNT": "true",
            "BRIDGE_HEALTH_INTERVAL_S": "0.5",
        },
    )
    loop = asyncio.get_running_loop()

    async def status_containing(text: str) -> str:
        async with asyncio.timeout(CLI_TIMEOUT_S):
            while True:
                datagram = (await loop.sock_recv(notify, 4096)).decode()
                if text in datagram:
                    return datagram

    try:
        ready = await status_containing("READY=1")
        assert "Codex is not signed in: run `codex-bridge login`" in ready
        code, out, err = await cli(
            "login", "--with-api-key", *state, stdin=b"sk-test-status-012345"
        )
        assert code == 0, err
        assert f"(PID {proc.pid})" in out  # it knows the daemon will pick the sign-in up
        await status_containing("signed in with an API key")
    finally:
        proc.terminate()
        async with asyncio.timeout(CLI_TIMEOUT_S):
            await proc.wait()
        notify.close()


# -- a pool of accounts -------------------------------------------------------------------


async def pool_of(tmp_path: Path, keys: dict[str, str]) -> Settings:
    """Settings for a pool with one signed-in Codex home per account."""
    accounts = []
    for name, key in keys.items():
        home = tmp_path / f"account-{name}"
        assert await signin.login_api_key(bridge_test_settings(home), {}, key) == 0
        accounts.append(f"{name}={home}")
    return account_settings(tmp_path, **{"codex.accounts": accounts})


async def test_pool_fails_over_to_another_account_when_one_reaches_its_limit(
    tmp_path: Path,
) -> None:
    settings = await pool_of(
        tmp_path, {"limited": "sk-test-limited-0123456789", "spare": "sk-test-spare-0123456789"}
    )
    async with running_bridge(settings) as bridge:
        accounts = bridge.app[ACCOUNTS]
        await wait_until(
            lambda: all(a.account_type == "apiKey" for a in accounts.values()),
            timeout=RESTART_TIMEOUT_S,
        )
        # Equal headroom and load: the first request goes to the first account, at its limit.
        status, _, body = await chat(bridge, "[[reply=spare]]", stream=True)
        assert status == 200
        assert '"content":"spare"' in body
        assert accounts["limited"].usage_reset_at() is not None  # drained until its reset
        for _ in range(3):
            status, _, body = await chat(bridge, "[[reply=still fine]]")
            assert status == 200, body
        _, usage = await get_json(bridge, "/v1/usage")
        limited = [w for w in usage["rate_limits"] if w["account"] == "limited"]
        assert limited[0]["used_percent"] == 100
        _, ready = await get_json(bridge, "/readyz")
        assert ready["status"] == "ready"
        text = await metrics_text(bridge)
        assert (
            'codex_bridge_rate_limit_used_percent{account="limited",limit="codex",window="primary"} 100.0'
            in text
        )


async def test_pool_answers_usage_limit_when_every_account_is_at_its_limit(
    tmp_path: Path,
) -> None:
    settings = await pool_of(
        tmp_path, {"one": "sk-test-limited-0123456789", "two": "sk-test-limited-9876543210"}
    )
    async with running_bridge(settings) as bridge:
        status, headers, body = await chat(bridge, "hello")
        assert status == 429
        assert body["error"]["code"] == "usage_limit_reached"
        assert 3000 <= _retry_after(headers) <= 3600


async def test_pool_continues_a_stored_response_in_the_account_that_holds_its_thread(
    tmp_path: Path,
) -> None:
    settings = await pool_of(tmp_path, {"a": "sk-test-a-0123456789", "b": "sk-test-b-0123456789"})
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        url = f"{bridge.base_url}/v1/responses"
        # Account a serves the first turn and reports half its window used...
        async with http.post(
            url, json={"model": DEMO_MODEL_ID, "input": "[[rate_limits=50,0]] remember me"}
        ) as resp:
            first = await resp.json()
        assert resp.status == 200, first
        # ...so the continuation is offered to b first, whose Codex home lacks the thread.
        async with http.post(
            url,
            json={
                "model": DEMO_MODEL_ID,
                "previous_response_id": first["id"],
                "input": "[[echo_input]]",
            },
        ) as resp:
            second = await resp.json()
        assert resp.status == 200, second
        assert "remember me" in second["output"][0]["content"][0]["text"]


async def test_login_and_account_address_one_account_of_the_pool_by_name(tmp_path: Path) -> None:
    pool = {"BRIDGE_CODEX_ACCOUNTS": f"main={tmp_path / 'main'},spare={tmp_path / 'spare'}"}
    state = ["--state-dir", str(tmp_path / "state")]
    code, _, err = await cli(
        "login",
        "--with-api-key",
        "--account",
        "spare",
        *state,
        stdin=b"sk-test-spare-0123456789",
        env=pool,
    )
    assert code == 0, err
    assert (tmp_path / "spare" / "auth.json").is_file()
    assert not (tmp_path / "main" / "auth.json").exists()
    code, out, err = await cli("account", "--json", "--account", "spare", *state, env=pool)
    assert code == 0, err
    assert orjson.loads(out)["type"] == "apiKey"
    code, _, err = await cli("account", "--account", "nope", *state, env=pool)
    assert code == 2
    assert "no account 'nope'" in err
