"""How a failed turn start-up call becomes the client's error (bridge.codex.queued.start_error)."""

from __future__ import annotations

from bridge.codex.queued import start_error
from bridge.errors import BridgeError, InvalidRequest, WorkerCrashed
from bridge.worker.rpc import ConnectionClosed, RpcError


def test_codex_refusing_invalid_params_or_request_is_a_400_with_its_message() -> None:
    too_long = start_error(
        RpcError(
            -32602,
            "Input exceeds the maximum length of 1048576 characters.",
            {"input_error_code": "input_too_large", "max_chars": 1048576},
        ),
        "turn/start",
    )
    duplicate = start_error(RpcError(-32600, "duplicate dynamic tool name: f"), "thread/start")
    assert isinstance(too_long, InvalidRequest) and too_long.status == 400
    assert too_long.code == "string_above_max_length"
    assert too_long.headers()["x-should-retry"] == "false"
    assert isinstance(duplicate, InvalidRequest)
    assert duplicate.message == "Codex rejected the request: duplicate dynamic tool name: f"


def test_other_start_failures_stay_server_errors() -> None:
    internal = start_error(RpcError(-32603, "internal error"), "turn/start")
    assert not isinstance(internal, InvalidRequest) and internal.status == 500
    assert isinstance(start_error(ConnectionClosed(), "turn/start"), WorkerCrashed)
    assert type(start_error(KeyError("thread"), "thread/start")) is BridgeError
