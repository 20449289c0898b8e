"""Property-based fuzzing of the HTTP API from `schema/openapi.yaml` against a real daemon.

Schemathesis turns every operation of the published schema into Hypothesis
strategies: valid requests (two thirds of them steered to the demo model,
so real Codex turns run with fuzzed parameters) and invalid ones (wrong types,
missing fields, extra parameters). Against `codex-bridge serve --demo` with
one API key, every answer must be below 500, every 4xx must carry the OpenAI
error envelope, and the daemon must still be ready afterwards. Bounded for
CI: a fixed number of derandomized examples per operation and mode, no
example database, no shrinking (a failure names the exact request).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Err
from schemathesis.core.transport import Response
from schemathesis.schemas import APIOperation

from bridge.demo import DEMO_MODEL_ID

REPO: Final = Path(__file__).resolve().parents[2]
SCHEMA: Final = schemathesis.openapi.from_path(REPO / "schema" / "openapi.yaml")
API_KEY: Final = "sk-fuzz-0123456789abcdef"
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
READY_POLL_S: Final = 0.1
# One request, a real Codex turn included, on a busy 2-core box.
REQUEST_TIMEOUT_S: Final = 60.0
# Examples per (operation, mode): ~600 requests in all, under a minute on 2 cores.
MAX_EXAMPLES: Final = 25
# Operations whose examples run a Codex turn get fewer (each costs ~0.1-0.3 s of CPU).
TURN_MAX_EXAMPLES: Final = 30
TURN_PATHS: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})


Operation = APIOperation[Any, Any, Any, Any]
FuzzCase = Case[Any]


def _operations() -> list[Operation]:
    """Every operation of the schema; one that schemathesis cannot read fails collection."""
    operations: list[Operation] = []
    for result in SCHEMA.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operations.append(result.ok())
    return operations


OPERATIONS: Final = _operations()
# Negative mode needs something to make invalid: a body, a query or a header (a string path
# parameter has no invalid value).
CASES: Final = [
    (operation, mode)
    for operation in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE
    or bool(operation.body)
    or bool(operation.query)
    or bool(operation.headers)
]


@pytest.fixture(scope="module")
def daemon_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`codex-bridge serve --demo` as its own process: the fuzz client is synchronous, so the
    daemon must not share the test's event loop."""
    state = tmp_path_factory.mktemp("fuzz-state")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_API_KEYS"] = API_KEY
    argv = [sys.executable, "-m", "bridge", "serve", "--demo", "--port", "0",
            "--state-dir", str(state)]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, env=env) as proc:
        yield from _serving(proc)


def _serving(proc: subprocess.Popen[bytes]) -> Iterator[str]:
    lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
    # Reads the daemon's log to its end, so a full pipe never blocks the daemon.
    pump = threading.Thread(target=_pump, args=(proc, lines), daemon=True)
    pump.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "the daemon exited before it listened"
            if line.get("msg") == "codex-bridge listening":
                url = str(line["url"])
                break
        while requests.get(f"{url}/readyz", timeout=REQUEST_TIMEOUT_S).status_code != 200:
            assert time.monotonic() < deadline, "no worker became ready"
            time.sleep(READY_POLL_S)
        yield url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pump.join(STOP_TIMEOUT_S)


def _pump(proc: subprocess.Popen[bytes], lines: queue.Queue[dict[str, Any] | None]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        with contextlib.suppress(orjson.JSONDecodeError):
            lines.put(orjson.loads(raw))
    lines.put(None)


# How far a generated body is steered towards a real turn: left as generated, the demo model
# named, or the demo model and a plain user text (every other field still fuzzed).
AIMS: Final = ("model-and-input", "model", "as-generated")
PLAIN_INPUT: Final[dict[str, Any]] = {
    "messages": [{"role": "user", "content": "hello"}],
    "prompt": "hello",
    "input": "hello",
}


def _aim_at_demo(case: FuzzCase, aim: str, stored_id: str | None) -> FuzzCase:
    """Generated bodies mostly stop at 404 model_not_found or at a 400 on the messages, and
    generated response ids at 404; steered ones reach a Codex turn (the remaining parameters
    still fuzzed) or a response that exists."""
    if aim == "as-generated":
        return case
    if stored_id is not None and case.path_parameters and "response_id" in case.path_parameters:
        case.path_parameters["response_id"] = stored_id
    if not isinstance(case.body, dict) or "model" not in case.body:
        return case
    case.body["model"] = DEMO_MODEL_ID
    if aim == "model-and-input":
        for key, value in PLAIN_INPUT.items():
            if key in case.body:
                case.body[key] = value
    return case


def _stored_response(http: requests.Session, url: str) -> str:
    """A stored response of the fuzzing key, for the operations on `/v1/responses/{id}`."""
    created = http.post(
        f"{url}/v1/responses",
        json={"model": DEMO_MODEL_ID, "input": "hello", "store": True},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def assert_openai_envelope(response: Response) -> None:
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), content_type
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert isinstance(error.get("message"), str) and error["message"], body
    assert isinstance(error.get("type"), str) and error["type"], body
    assert "param" in error and "code" in error, body


def _describe(case: FuzzCase, response: Response) -> str:
    return (
        f"{case.method} {case.formatted_path} query={case.query!r} headers={case.headers!r} "
        f"body={case.body!r} -> {response.status_code} {response.content[:500]!r}"
    )


@pytest.mark.parametrize(
    ("operation", "mode"), CASES, ids=[f"{op.label} {mode.value}" for op, mode in CASES]
)
def test_fuzzed_requests_get_no_5xx_and_every_4xx_is_an_openai_envelope(
    daemon_url: str, operation: Operation, mode: GenerationMode
) -> None:
    examples = TURN_MAX_EXAMPLES if operation.path in TURN_PATHS else MAX_EXAMPLES
    http = requests.Session()
    stored_id = None
    if "{response_id}" in operation.path:
        stored_id = _stored_response(http, daemon_url)

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        # No shrinking: each shrink step is a real request (a Codex turn), which would take
        # a failing run far past CI's budget; the failure message has the exact request.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.builds(
            _aim_at_demo, operation.as_strategy(mode), st.sampled_from(AIMS), st.just(stored_id)
        )
    )
    def check(case: FuzzCase) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        response = case.call(
            base_url=daemon_url, session=http, headers=headers, timeout=REQUEST_TIMEOUT_S
        )
        assert response.status_code < 500, _describe(case, response)
        if 400 <= response.status_code < 500:
            assert_openai_envelope(response)

    try:
        check()
    finally:
        http.close()
    ready = requests.get(f"{daemon_url}/readyz", timeout=REQUEST_TIMEOUT_S)
    assert ready.status_code == 200, f"not ready after fuzzing {operation.label}"
