"""Images through the real Codex worker: measured before it sees them, remote ones fetched by the bridge.

What the model receives is read from the demo model's recorded requests,
and what the worker receives from the JSON-RPC messages the bridge sends.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest

from bridge.demo import DEMO_MODEL_ID
from tests.contract.test_tool_calls import ASK, TOOLS, follow_up
from tests.harness import RunningBridge, bridge_test_settings, running_bridge
from tests.images import ImageServer, bomb_png, data_url, png, serving_images

# The fetching bridge's cap: the chunked /big.png body is larger.
MAX_BYTES = 32 * 1024
MAX_IMAGES = 3


class SentToWorker:
    """Every request the bridge sends a worker, serialized, to search for a marker."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def __call__(self, direction: str, message: dict[str, Any]) -> None:
        if direction == "c2s":
            self.lines.append(orjson.dumps(message))

    def mentions(self, marker: str) -> bool:
        return any(marker.encode() in line for line in self.lines)


@pytest.fixture(scope="module")
async def image_server() -> AsyncIterator[ImageServer]:
    async with serving_images() as server:
        yield server


@pytest.fixture(scope="module")
def sent() -> SentToWorker:
    return SentToWorker()


@pytest.fixture(scope="module")
async def fetching(
    tmp_path_factory: pytest.TempPathFactory, sent: SentToWorker
) -> AsyncIterator[RunningBridge]:
    settings = bridge_test_settings(
        tmp_path_factory.mktemp("fetching"),
        **{
            "images.fetch_allow": ["127.0.0.1"],
            "images.max_bytes": MAX_BYTES,
            "images.max_per_request": MAX_IMAGES,
        },
    )
    async with running_bridge(settings, also_hook=sent) as bridge:
        yield bridge


def sdk(bridge: RunningBridge) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{bridge.base_url}/v1", api_key="unused", max_retries=0)


def image_message(marker: str, *urls: str) -> list[Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": marker}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": parts}]


def images_seen_by_model(bridge: RunningBridge, marker: str) -> list[str] | None:
    """The image URLs of the model request that carried `marker`; None if none did."""
    for body in bridge.demo.requests:
        if marker not in orjson.dumps(body).decode():
            continue
        return [
            str(part.get("image_url"))
            for item in body.get("input") or []
            if isinstance(item, dict) and isinstance(item.get("content"), list)
            for part in item["content"]
            if isinstance(part, dict) and part.get("type") == "input_image"
        ]
    return None


def marker() -> str:
    return "image-test-" + secrets.token_hex(6)


async def test_png_declaring_14500_pixels_square_is_400_and_the_worker_never_gets_it(
    fetching: RunningBridge, sent: SentToWorker
) -> None:
    mark = marker()
    async with sdk(fetching) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=DEMO_MODEL_ID, messages=image_message(mark, data_url(bomb_png()))
            )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "image_too_large"
    assert error["param"] == "messages[0].content[1].image_url.url"
    assert "14500x14500" in error["message"]
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert not sent.mentions(mark)
    assert images_seen_by_model(fetching, mark) is None


async def test_a_small_inline_png_reaches_the_model_as_sent(fetching: RunningBridge) -> None:
    mark = marker()
    url = data_url(png(2, 2))
    async with sdk(fetching) as client:
        await client.chat.completions.create(model=DEMO_MODEL_ID, messages=image_message(mark, url))
    assert images_seen_by_model(fetching, mark) == [url]


async def test_more_images_than_max_per_request_is_400_too_many_images(
    fetching: RunningBridge, sent: SentToWorker
) -> None:
    mark = marker()
    async with sdk(fetching) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=DEMO_MODEL_ID,
                messages=image_message(mark, *[data_url(png())] * (MAX_IMAGES + 1)),
            )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "too_many_images"
    assert not sent.mentions(mark)


async def test_remote_png_on_an_allowed_host_is_fetched_and_reaches_the_model_as_data(
    fetching: RunningBridge, image_server: ImageServer
) -> None:
    mark = marker()
    async with sdk(fetching) as client:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=image_message(mark, f"{image_server.base_url}/pixel.png"),
        )
    seen = images_seen_by_model(fetching, mark)
    assert seen is not None and len(seen) == 1
    assert seen[0] == "data:image/png;base64," + base64.b64encode(png()).decode()
    assert "/pixel.png" in image_server.hits


async def test_remote_image_in_a_responses_request_reaches_the_model_as_data(
    fetching: RunningBridge, image_server: ImageServer
) -> None:
    mark = marker()
    async with sdk(fetching) as client:
        await client.responses.create(
            model=DEMO_MODEL_ID,
            store=False,
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": mark},
                        {
                            "type": "input_image",
                            "image_url": f"{image_server.base_url}/redirect/1",
                            "detail": "auto",
                        },
                    ],
                }
            ],
        )
    assert images_seen_by_model(fetching, mark) == [data_url(png())]


@pytest.mark.parametrize(
    ("path", "code", "why"),
    [
        ("/missing.png", "invalid_image_url", "HTTP 404"),
        ("/page.html", "invalid_image_url", "text/html"),
        ("/big.png", "invalid_image_url", f"larger than the {MAX_BYTES} byte limit"),
        ("/bomb.png", "image_too_large", "14500x14500"),
        ("/to-metadata", "invalid_image_url", "metadata"),
    ],
)
async def test_remote_image_that_cannot_be_used_is_400_saying_why(
    fetching: RunningBridge,
    image_server: ImageServer,
    sent: SentToWorker,
    path: str,
    code: str,
    why: str,
) -> None:
    mark = marker()
    async with sdk(fetching) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=DEMO_MODEL_ID, messages=image_message(mark, image_server.base_url + path)
            )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == code
    assert why in error["message"]
    assert error["param"] == "messages[0].content[1].image_url.url"
    assert not sent.mentions(mark)


async def test_remote_image_on_loopback_is_refused_by_the_ssrf_guard_without_an_allow_list(
    bridge: RunningBridge, image_server: ImageServer
) -> None:
    hits_before = len(image_server.hits)
    mark = marker()
    async with sdk(bridge) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=DEMO_MODEL_ID,
                messages=image_message(mark, f"{image_server.base_url}/pixel.png"),
            )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_image_url"
    assert "SSRF" in error["message"] and "loopback" in error["message"]
    assert len(image_server.hits) == hits_before
    assert images_seen_by_model(bridge, mark) is None


async def test_follow_up_that_resumes_a_parked_turn_fetches_none_of_its_history_images(
    fetching: RunningBridge, image_server: ImageServer
) -> None:
    messages: list[Any] = image_message(f"{marker()} {ASK}", f"{image_server.base_url}/pixel.png")
    async with sdk(fetching) as client:
        first = await client.chat.completions.create(
            model=DEMO_MODEL_ID, messages=messages, tools=TOOLS
        )
        message = first.choices[0].message
        (call,) = message.tool_calls or []
        hits_after_first = len(image_server.hits)
        upstream_before = len(fetching.demo.requests)
        resumed = await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=follow_up(messages, message, {call.id: "Rain"}),
            tools=TOOLS,
        )
    assert resumed.choices[0].message.content == "Tool results: Rain"
    assert len(fetching.demo.requests) == upstream_before + 1  # the parked turn went on
    assert len(image_server.hits) == hits_after_first  # its history's image was not fetched again
