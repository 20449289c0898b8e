"""Validates every JSON-RPC message the bridge exchanges with Codex against its version's schema bundle.

The bundle in `schema/v<codex version>/` comes from
`codex app-server generate-json-schema --experimental` of that binary; the
version is read from the worker's `initialize` answer (messages before it
wait). Legacy `codex/event/*` notifications are checked against `EventMsg`.
Requests, notifications and server requests are checked against their
method's variant; responses against `<Method>Response.json` (the bridge's
own answers to server requests against the request's `...Response`).
A Codex upgrade that changes the protocol fails the suite loudly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft7Validator

from bridge.app import CODEX_VERSION

SCHEMAS = Path(__file__).resolve().parents[1] / "schema"
BUNDLE = SCHEMAS / f"v{CODEX_VERSION}"


@cache
def _load(name: str, bundle: Path = BUNDLE) -> dict[str, Any]:
    path = bundle / name if (bundle / name).is_file() else next(bundle.rglob(name), None)
    if path is None:
        raise LookupError(f"{name} not in {bundle}")
    document: dict[str, Any] = json.loads(path.read_text())
    return document


@cache
def _variant(union: str, method: str, bundle: Path = BUNDLE) -> Draft7Validator | None:
    root = _load(union, bundle)
    for variant in root["oneOf"]:
        if variant.get("properties", {}).get("method", {}).get("enum") == [method]:
            return Draft7Validator({**variant, "definitions": root.get("definitions", {})})
    return None


# Response types whose names do not follow the method's.
_RESPONSE_NAMES: Final = {
    "addConversationListener": "AddConversationSubscription",
    "removeConversationListener": "RemoveConversationSubscription",
    "account/read": "GetAccount",
    "account/rateLimits/read": "GetAccountRateLimits",
}

# Known deviations of a release from its own generated schema, each one
# checked against that release: the binary omits fields its schema requires.
KNOWN_QUIRKS: Final = {
    "v0.77.0": (
        "notification item/completed: 'completedAtMs' is a required property",
        "notification item/started: 'startedAtMs' is a required property",
        "notification thread/started: 'ephemeral' is a required property",
    ),
}


@cache
def _response(method: str, bundle: Path = BUNDLE) -> Draft7Validator | None:
    name = _RESPONSE_NAMES.get(method) or "".join(
        part[:1].upper() + part[1:] for part in method.replace("_", "/").split("/")
    )
    try:
        return Draft7Validator(_load(f"{name}Response.json", bundle))
    except LookupError:
        return None


@cache
def _server_request_answer(method: str, bundle: Path = BUNDLE) -> Draft7Validator | None:
    variant = _variant("ServerRequest.json", method, bundle)
    if variant is None:
        return None
    params_ref = variant.schema["properties"]["params"]["$ref"].rsplit("/", 1)[1]
    try:
        return Draft7Validator(_load(params_ref.removesuffix("Params") + "Response.json", bundle))
    except LookupError:
        return None


@cache
def _event_msg(bundle: Path) -> Draft7Validator | None:
    try:
        return Draft7Validator(_load("EventMsg.json", bundle))
    except LookupError:
        return None


def bundle_for(user_agent: str) -> Path:
    """`codex-bridge/0.163.0 (...)` -> schema/v0.163.0."""
    version = user_agent.split(" ", 1)[0].rsplit("/", 1)[-1]
    return SCHEMAS / f"v{version}"


class RpcSchemaValidator:
    """A `message_hook` for workers: collects every schema violation it sees."""

    def __init__(self, bundle: Path | None = None) -> None:
        self.errors: list[str] = []
        self.checked = 0
        self.bundle = bundle
        self._waiting: list[tuple[str, dict[str, Any]]] = []
        # Every worker of a bridge shares this hook and numbers its requests from 1,
        # so one id may be in flight on several connections: a message is checked
        # against each method asked under its id, and passes if one fits.
        self._our_requests: dict[Any, list[str]] = {}
        self._their_requests: dict[Any, list[str]] = {}
        self._probes: dict[Any, str] = {}

    def _check(self, validator: Draft7Validator | None, value: Any, what: str) -> None:
        if validator is None:
            self.errors.append(f"{what}: no schema in the bundle")
            return
        self.checked += 1
        error = next(iter(validator.iter_errors(value)), None)
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path)
            found = f"{what}: {error.message[:300]} at {path or '<root>'}"
            quirks = KNOWN_QUIRKS.get(self.bundle.name if self.bundle else "", ())
            if not found.startswith(quirks):
                self.errors.append(found)

    def _answered(
        self,
        asked: dict[Any, list[str]],
        message: dict[str, Any],
        schema_of: Callable[[str, Path], Draft7Validator | None],
        what: str,
    ) -> None:
        """Checks an answer against the methods in flight under its id; takes the one it fits."""
        methods = asked.get(message.get("id"), [])
        if not methods:
            return
        bundle = self.bundle
        assert bundle is not None
        index = 0
        if "result" in message:
            if len(methods) > 1:  # rare: only then is the fitting one searched for
                fits = (
                    i
                    for i, m in enumerate(methods)
                    if (v := schema_of(m, bundle)) is not None
                    and next(iter(v.iter_errors(message["result"])), None) is None
                )
                index = next(fits, 0)
            self._check(
                schema_of(methods[index], bundle), message["result"], f"{what} {methods[index]}"
            )
        del methods[index]
        if not methods:
            del asked[message.get("id")]

    def __call__(self, direction: str, message: dict[str, Any]) -> None:
        if self.bundle is None:
            result = message.get("result")
            if isinstance(result, dict) and "userAgent" in result:
                self.bundle = bundle_for(str(result["userAgent"]))
                if not self.bundle.is_dir():
                    self.errors.append(f"no schema bundle {self.bundle.name} in schema/")
                    return
                for waiting in self._waiting:
                    self._validate(*waiting)
                self._waiting.clear()
            else:
                self._waiting.append((direction, message))
                return
        self._validate(direction, message)

    def _validate(self, direction: str, message: dict[str, Any]) -> None:
        bundle = self.bundle
        assert bundle is not None
        method = message.get("method")
        if direction == "c2s":
            if method is None:
                self._answered(self._their_requests, message, _server_request_answer, "answer to")
            elif "id" in message:
                self._our_requests.setdefault(message["id"], []).append(method)
                variant = _variant("ClientRequest.json", method, bundle)
                if variant is None:
                    # A capability probe: fine if the worker refuses it, drift if it answers.
                    self._probes[message["id"]] = method
                else:
                    self._check(variant, message, f"request {method}")
            else:
                self._check(
                    _variant("ClientNotification.json", method, bundle),
                    message,
                    f"notification {method}",
                )
        elif method is None:
            probe = self._probes.pop(message.get("id"), None)
            if probe is not None and "error" not in message:
                self.errors.append(f"request {probe}: no schema in the bundle")
            self._answered(self._our_requests, message, _response, "response to")
        elif "id" in message:
            self._their_requests.setdefault(message["id"], []).append(method)
            self._check(
                _variant("ServerRequest.json", method, bundle), message, f"server request {method}"
            )
        elif method.startswith("codex/event/"):
            msg = (message.get("params") or {}).get("msg")
            self._check(_event_msg(bundle), msg, f"event {method}")
        else:
            # Codex stamps every notification with emittedAtMs, outside the schema.
            body = {k: v for k, v in message.items() if k != "emittedAtMs"}
            self._check(_variant("ServerNotification.json", method), body, f"notification {method}")
