"""The bridge's own HTTP contract as an OpenAPI 3.1 document, built from the code.

Paths come from the app's router, request bodies from the pydantic request
models the handlers validate with, and every error from the one envelope.
`scripts/gen-openapi` writes it to `schema/openapi.yaml`; a test fails when
the file and the code disagree.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel

from bridge.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    InputTokensRequest,
    ResponseCreateRequest,
)

REQUEST_MODELS: Final[dict[tuple[str, str], type[BaseModel]]] = {
    ("POST", "/v1/chat/completions"): ChatCompletionRequest,
    ("POST", "/v1/completions"): CompletionRequest,
    ("POST", "/v1/responses"): ResponseCreateRequest,
    ("POST", "/v1/responses/input_tokens"): InputTokensRequest,
}

SUMMARIES: Final = {
    "/healthz": "The process answers.",
    "/readyz": "A worker is ready to take turns (503 while none is, and while draining).",
    "/metrics": "Prometheus metrics.",
    "/auth/verify": (
        "Traefik ForwardAuth: 204 with the bearer key's identity headers, or 401; 403 while "
        "no keys are configured (unless auth.verify_without_keys)."
    ),
    "/v1/models": "Served model ids.",
    "/v1/models/{model}": "One served model, or 404 model_not_found.",
    "/v1/chat/completions": "Chat completion, JSON or SSE (chat.completion.chunk, then [DONE]).",
    "/v1/completions": "Legacy text completion, JSON or SSE (text_completion frames, then [DONE]).",
    "/v1/responses": "Responses API, JSON or typed SSE events (no [DONE]).",
    "/v1/responses/{response_id}": (
        "A stored response of the caller's key (GET), or its deletion (DELETE, with its Codex "
        "thread); another key's response is 404."
    ),
    "/v1/responses/{response_id}/input_items": (
        "The stored response's input items, OpenAI cursor pagination "
        "(query: after, before, limit 1-100, order asc|desc)."
    ),
    "/v1/responses/{response_id}/cancel": (
        "Cancels a background response; the bridge runs none, so a stored response is 400."
    ),
    "/v1/responses/input_tokens": "Input tokens of a Responses request, by the bridge's tokenizer.",
    "/v1/usage": (
        "Token usage per API key and model in day buckets (query: start_time, end_time; "
        "default: today UTC until now)."
    ),
}

ERROR_ENVELOPE: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_ERROR_STATUSES: Final = {
    "400": "Invalid request",
    "401": "Missing or wrong API key",
    "404": "Unknown model, route or stored response",
    "413": "Body too large",
    "429": "Queue full or wait expired (Retry-After)",
    "502": "Worker crashed or the model provider failed",
    "503": "No worker ready, or shutting down (Retry-After)",
    "504": "A turn deadline expired",
}


def _path_template(canonical: str) -> str:
    # aiohttp writes `{model:.+}`; OpenAPI wants `{model}`.
    out, depth, skipping = [], 0, False
    for ch in canonical:
        if ch == "{":
            depth += 1
            skipping = False
        elif ch == "}":
            depth -= 1
            skipping = False
        elif ch == ":" and depth:
            skipping = True
            continue
        if not skipping:
            out.append(ch)
    return "".join(out)


def build_spec(app: web.Application) -> dict[str, Any]:
    components: dict[str, Any] = {"ErrorResponse": ERROR_ENVELOPE}
    paths: dict[str, Any] = {}
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = _path_template(route.resource.canonical)
        methods = ["get", "post"] if route.method == "*" else [route.method.lower()]
        for method in methods:
            operation: dict[str, Any] = {
                "summary": SUMMARIES.get(path, path),
                "responses": {
                    "200": {"description": "Success"},
                    **{
                        status: {
                            "description": text,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ErrorResponse"}
                                }
                            },
                        }
                        for status, text in _ERROR_STATUSES.items()
                    },
                },
            }
            params = [seg.strip("{}") for seg in path.split("/") if seg.startswith("{")]
            if params:
                operation["parameters"] = [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in params
                ]
            model = REQUEST_MODELS.get((method.upper(), path))
            if model is not None:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, definition in schema.pop("$defs", {}).items():
                    components[name] = definition
                components[model.__name__] = schema
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    },
                }
            paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "codex-bridge",
            "version": version("codex-bridge"),
            "description": "OpenAI-compatible HTTP API over supervised codex app-server workers.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(components.items()))},
    }
