"""The schema checker that guards the integration suite against protocol drift is not vacuous."""

from __future__ import annotations

from tests.rpc_schema import BUNDLE, RpcSchemaValidator


def test_the_bundle_of_the_pinned_codex_is_in_the_repo() -> None:
    assert (BUNDLE / "ClientRequest.json").is_file()
    assert (BUNDLE / "ServerNotification.json").is_file()


def test_valid_traffic_passes() -> None:
    v = RpcSchemaValidator()
    v(
        "c2s",
        {"id": 1, "method": "initialize", "params": {"clientInfo": {"name": "x", "version": "1"}}},
    )
    v(
        "s2c",
        {
            "id": 1,
            "result": {
                "userAgent": "x",
                "codexHome": "/h",
                "platformFamily": "unix",
                "platformOs": "linux",
            },
        },
    )
    v("c2s", {"method": "initialized"})
    v("c2s", {"id": 2, "method": "turn/interrupt", "params": {"threadId": "t", "turnId": "u"}})
    assert v.errors == []
    assert v.checked == 4


def test_drift_is_reported() -> None:
    v = RpcSchemaValidator()
    v("c2s", {"id": 2, "method": "turn/start", "params": {"input": []}})  # no threadId
    v("s2c", {"method": "item/agentMessage/delta", "params": {"delta": 5}})
    v("c2s", {"id": 3, "method": "no/such/method", "params": {}})
    v("s2c", {"id": 0, "method": "item/commandExecution/requestApproval", "params": {}})
    v("c2s", {"id": 0, "result": {"decision": "shrug"}})
    assert len(v.errors) == 5, v.errors
    assert any("threadId" in e for e in v.errors)
    assert any("no schema" in e for e in v.errors)
