"""The schema checker that guards the integration suite against protocol drift is not vacuous."""

from __future__ import annotations

from tests.rpc_schema import BUNDLE, RpcSchemaValidator


def test_the_bundle_of_the_pinned_codex_is_in_the_repo() -> None:
    assert (BUNDLE / "ClientRequest.json").is_file()
    assert (BUNDLE / "ServerNotification.json").is_file()


def test_valid_traffic_passes() -> None:
    v = RpcSchemaValidator(BUNDLE)
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
    v = RpcSchemaValidator(BUNDLE)
    v("c2s", {"id": 2, "method": "turn/start", "params": {"input": []}})  # no threadId
    v("s2c", {"method": "item/agentMessage/delta", "params": {"delta": 5}})
    v("c2s", {"id": 3, "method": "no/such/method", "params": {}})
    v("s2c", {"id": 3, "result": {}})  # answered: the worker knows a method the bundle does not
    v("s2c", {"id": 0, "method": "item/commandExecution/requestApproval", "params": {}})
    v("c2s", {"id": 0, "result": {"decision": "shrug"}})
    assert len(v.errors) == 6, v.errors
    assert any("threadId" in e for e in v.errors)
    assert any("no schema" in e for e in v.errors)


def test_the_bundle_is_chosen_by_the_version_the_worker_reports() -> None:
    v = RpcSchemaValidator()
    v("c2s", {"id": 1, "method": "newConversation", "params": {}})  # waits for the version
    assert v.checked == 0
    v("s2c", {"id": 1, "result": {"userAgent": "codex_cli_rs/0.77.0 (Debian; x86_64)"}})
    assert v.bundle is not None and v.bundle.name == "v0.77.0"
    assert v.checked >= 1


def test_a_refused_capability_probe_is_not_drift() -> None:
    v = RpcSchemaValidator(BUNDLE)
    v("c2s", {"id": 7, "method": "no/such/method", "params": {}})
    v("s2c", {"id": 7, "error": {"code": -32600, "message": "unknown variant"}})
    assert v.errors == []
