"""The remote LLM's bounded retries: HTTP 503/429 before the stream starts are retried (with
backoff) up to ``retries`` times; after that the error names the status. A real HTTP server on
loopback that fails its first requests (no mocks of the HTTP layer)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port
from tests.unit.test_engine_llm import user as user_messages
from voicebot.engines.llm_openai import OpenAIChatModel
from voicebot.errors import EngineError


class Flaky:
    """Answers its first ``failures`` requests with ``status``, then streams "hello world"."""

    def __init__(self) -> None:
        self.failures = 0
        self.status = 503
        self.requests = 0

    async def completions(self, request: Request) -> Response:
        self.requests += 1
        if self.requests <= self.failures:
            return JSONResponse({"error": {"message": "busy"}}, status_code=self.status,
                                headers={"retry-after-ms": "50"})

        async def stream() -> AsyncIterator[bytes]:
            for word in ("hello", " world"):
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def flaky() -> Iterator[tuple[Flaky, str]]:
    state = Flaky()
    port = free_port()
    app = Starlette(routes=[Route("/v1/chat/completions", state.completions, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield state, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(5)


@pytest.mark.parametrize("status", [503, 429])
async def test_failures_before_the_stream_are_retried(flaky: tuple[Flaky, str], status: int) -> None:
    state, url = flaky
    state.requests, state.failures, state.status = 0, 2, status
    llm = OpenAIChatModel(url, "m", timeout=5, retries=2)
    assert [p async for p in llm.stream(user_messages("hi"), max_tokens=5, temperature=0.0)] == ["hello", " world"]
    assert state.requests == 3
    await llm.aclose()


async def test_retries_are_bounded_and_the_error_names_the_status(flaky: tuple[Flaky, str]) -> None:
    state, url = flaky
    state.requests, state.failures, state.status = 0, 10, 503
    llm = OpenAIChatModel(url, "m", timeout=5, retries=2)
    with pytest.raises(EngineError, match="HTTP 503"):
        async for _ in llm.stream(user_messages("hi"), max_tokens=5, temperature=0.0):
            pass
    assert state.requests == 3  # the first try and two retries
    await llm.aclose()
