"""Validates every JSON-RPC message the bridge exchanges with Codex against the pinned schema bundle.

The bundle in `schema/v<codex version>/` comes from
`codex app-server generate-json-schema --experimental` of the pinned binary.
Requests, notifications and server requests are checked against their
method's variant; responses against `<Method>Response.json` (the bridge's
own answers to server requests against the request's `...Response`).
A Codex upgrade that changes the protocol fails the suite loudly.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator

from bridge.app import CODEX_VERSION

BUNDLE = Path(__file__).resolve().parents[1] / "schema" / f"v{CODEX_VERSION}"


@cache
def _load(name: str) -> dict[str, Any]:
    path = next(BUNDLE.rglob(name), None)
    if path is None:
        raise LookupError(f"{name} not in {BUNDLE}")
    document: dict[str, Any] = json.loads(path.read_text())
    return document


@cache
def _variant(union: str, method: str) -> Draft7Validator | None:
    root = _load(union)
    for variant in root["oneOf"]:
        if variant.get("properties", {}).get("method", {}).get("enum") == [method]:
            return Draft7Validator({**variant, "definitions": root.get("definitions", {})})
    return None


@cache
def _response(method: str) -> Draft7Validator | None:
    name = "".join(part[:1].upper() + part[1:] for part in method.replace("_", "/").split("/"))
    try:
        return Draft7Validator(_load(f"{name}Response.json"))
    except LookupError:
        return None


@cache
def _server_request_answer(method: str) -> Draft7Validator | None:
    variant = _variant("ServerRequest.json", method)
    if variant is None:
        return None
    params_ref = variant.schema["properties"]["params"]["$ref"].rsplit("/", 1)[1]
    try:
        return Draft7Validator(_load(params_ref.removesuffix("Params") + "Response.json"))
    except LookupError:
        return None


class RpcSchemaValidator:
    """A `message_hook` for workers: collects every schema violation it sees."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.checked = 0
        self._our_requests: dict[Any, str] = {}
        self._their_requests: dict[Any, str] = {}

    def _check(self, validator: Draft7Validator | None, value: Any, what: str) -> None:
        if validator is None:
            self.errors.append(f"{what}: no schema in the bundle")
            return
        self.checked += 1
        error = next(iter(validator.iter_errors(value)), None)
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path)
            self.errors.append(f"{what}: {error.message[:300]} at {path or '<root>'}")

    def __call__(self, direction: str, message: dict[str, Any]) -> None:
        method = message.get("method")
        if direction == "c2s":
            if method is None:
                asked = self._their_requests.pop(message.get("id"), None)
                if asked is not None and "result" in message:
                    self._check(
                        _server_request_answer(asked), message["result"], f"answer to {asked}"
                    )
            elif "id" in message:
                self._our_requests[message["id"]] = method
                self._check(_variant("ClientRequest.json", method), message, f"request {method}")
            else:
                self._check(
                    _variant("ClientNotification.json", method), message, f"notification {method}"
                )
        elif method is None:
            asked = self._our_requests.pop(message.get("id"), None)
            if asked is not None and "result" in message:
                self._check(_response(asked), message["result"], f"response to {asked}")
        elif "id" in message:
            self._their_requests[message["id"]] = method
            self._check(_variant("ServerRequest.json", method), message, f"server request {method}")
        else:
            # Codex stamps every notification with emittedAtMs, outside the schema.
            body = {k: v for k, v in message.items() if k != "emittedAtMs"}
            self._check(_variant("ServerNotification.json", method), body, f"notification {method}")
