"""Helpers for the SSE / chat completions tests: an SSE parser that keeps every field (ids, event
names, comments), so tests can assert on framing. The in-process server is tests/thread_server.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

KEY = "sse-key"


@dataclass
class SseEvent:
    id: str | None = None
    event: str | None = None
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        import json

        return json.loads(self.data)


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Parse a text/event-stream per the WHATWG rules (enough of them for our server)."""
    current = SseEvent()
    has_fields = False
    async for line in response.aiter_lines():
        if line == "":
            if has_fields:
                yield current
            current, has_fields = SseEvent(), False
            continue
        if line.startswith(":"):
            current.comments.append(line[1:].strip())
            has_fields = True
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        has_fields = True
        if name == "id":
            current.id = value
        elif name == "event":
            current.event = value
        elif name == "data":
            current.data = value if not current.data else current.data + "\n" + value
        elif name == "retry":
            current.retry = int(value)


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
