"""Reading SSE bodies in tests: frames as (event, data) pairs, exactly as sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import ClientResponse


@dataclass
class Frame:
    event: str | None
    data: str
    comment: bool = False

    def json(self) -> Any:
        return orjson.loads(self.data)


def parse_sse(body: str) -> list[Frame]:
    frames: list[Frame] = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        event: str | None = None
        data: list[str] = []
        comment = False
        for line in block.split("\n"):
            if line.startswith(":"):
                comment = True
            elif line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        frames.append(Frame(event=event, data="\n".join(data), comment=comment and not data))
    return frames


async def read_sse(response: ClientResponse) -> list[Frame]:
    return parse_sse((await response.read()).decode())


def data_frames(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if not f.comment]
