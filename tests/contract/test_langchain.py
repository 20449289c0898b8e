"""LangChain's structured output through forced function calls, against the real bridge."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge


class Weather(BaseModel):
    """Weather report for a city."""

    city: str
    celsius: int
    note: str | None = None


@pytest.mark.parametrize("use_responses_api", [False, True])
async def test_with_structured_output_by_function_calling_returns_the_model(
    bridge: RunningBridge, use_responses_api: bool
) -> None:
    llm = ChatOpenAI(
        model=DEMO_MODEL_ID,
        base_url=f"{bridge.base_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        max_retries=0,
        use_responses_api=use_responses_api,
    )
    structured = llm.with_structured_output(Weather, method="function_calling")
    # Left to itself the demo model would answer "Hello from the demo model.".
    result = await structured.ainvoke("Tell me something nice.")
    assert result == Weather(city="demo", celsius=1)
    upstream = bridge.demo.requests[-1]
    call = upstream["text"]["format"]["schema"]["properties"]["call"]
    assert call["properties"]["name"]["const"] == "Weather"
    assert upstream.get("tools", []) == [] or all(
        tool.get("name") != "Weather" for tool in upstream["tools"]
    )
