"""schema/openapi.yaml stays the bridge's real contract."""

from __future__ import annotations

from pathlib import Path

import yaml

from bridge.app import make_app
from bridge.config import load_settings
from bridge.openapi import build_spec

SPEC = Path(__file__).resolve().parents[2] / "schema" / "openapi.yaml"


def test_openapi_file_matches_the_code() -> None:
    app = make_app(load_settings(config_path=None, env={}, overrides={}), environ={})
    assert yaml.safe_load(SPEC.read_text()) == build_spec(app), (
        "schema/openapi.yaml is stale: run scripts/gen-openapi"
    )


def test_every_route_and_error_envelope_is_described() -> None:
    spec = yaml.safe_load(SPEC.read_text())
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}/input_items",
        "/v1/responses/{response_id}/cancel",
        "/v1/responses/input_tokens",
        "/v1/models",
        "/v1/models/{model}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/auth/verify",
    ):
        assert path in spec["paths"], path
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletionRequest"
    )
    error = spec["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert error["required"] == ["message", "type", "param", "code"]
