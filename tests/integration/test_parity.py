"""Golden parity: every scenario replayed on the real binaries matches its fixture, and the two
dialects answer alike wherever both can carry the feature (see tests/parity.py)."""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.harness import RunningBridge
from tests.parity import (
    DIALECTS,
    SCENARIOS,
    Recorder,
    Scenario,
    dump,
    fixture_dir,
    parity_bridge,
    run,
)


@pytest.fixture(scope="module", params=DIALECTS)
async def dialect_bridge(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, RunningBridge, Recorder]]:
    dialect: str = request.param
    async with parity_bridge(dialect, tmp_path_factory.mktemp(f"parity-{dialect}")) as (b, rec):
        yield dialect, b, rec


def _diff(expected: str, actual: str, name: str) -> str:
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"{name} (fixture)",
            tofile=f"{name} (now)",
        )
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_scenario_matches_its_golden_fixture(
    dialect_bridge: tuple[str, RunningBridge, Recorder], scenario: Scenario
) -> None:
    dialect, bridge, recorder = dialect_bridge
    result = await run(bridge, recorder, scenario)
    for part in ("request", "response", "rpc"):
        path = fixture_dir(dialect, scenario) / f"{part}.json"
        expected = path.read_text()
        actual = dump(result[part])
        assert actual == expected, (
            "drift; if intended, regenerate with scripts/capture-fixtures\n"
            + _diff(expected, actual, str(path))
        )


def _without_codex_wording(response: Any) -> Any:
    # Error *messages* are Codex's own words, which change between releases;
    # status, type, code and param must still agree.
    body = response.get("body")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = {**body, "error": {**body["error"], "message": "<codex wording>"}}
    return {**response, "body": body}


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.v1], ids=lambda s: s.name)
def test_both_dialects_give_the_same_http_output(scenario: Scenario) -> None:
    v2, v1 = (
        orjson.loads((fixture_dir(d, scenario) / "response.json").read_bytes()) for d in DIALECTS
    )
    assert _without_codex_wording(v2) == _without_codex_wording(v1)


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if not s.v1], ids=lambda s: s.name)
def test_what_v1_cannot_carry_is_a_400_naming_the_param(scenario: Scenario) -> None:
    response = orjson.loads((fixture_dir("v1", scenario) / "response.json").read_bytes())
    assert response["status"] == 400
    assert response["body"]["error"]["code"] == "unsupported_by_dialect"
    assert response["body"]["error"]["param"]
