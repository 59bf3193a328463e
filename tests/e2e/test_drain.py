"""AppState.drain on a real transport with fake engines: what a shutdown waits for, and what it refuses.

The signal side (SIGTERM -> drain -> exit 0) is tests/e2e/test_shutdown.py, on the real server.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.session.fakes import SlowLlm
from tests.thread_server import ThreadServer


async def test_a_streamed_chat_completion_finishes_before_the_drain_ends() -> None:
    words = "one two three four five six seven eight nine ten eleven twelve"
    with ThreadServer(llm=SlowLlm(reply=words, delay=0.15)) as server:
        async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
            body = {"model": "voicebot", "stream": True, "messages": [{"role": "user", "content": "Count."}]}
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = response.aiter_lines()
                first = await anext(lines)
                assert first.startswith("data: ")
                drain = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                    server.state.drain(20), server.server_loop()))
                started = time.monotonic()
                await asyncio.sleep(0.1)
                refused = await http.post("/v1/chat/completions", json=body)
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
                assert (await http.get("/readyz")).status_code == 503
                assert not drain.done(), "the drain did not wait for the completion being streamed"
                rest = [line async for line in lines if line]
            assert rest[-1] == "data: [DONE]"
            await asyncio.wait_for(drain, 10)
            assert time.monotonic() - started < 15
            assert server.state.completions == 0


async def test_the_drain_gives_up_at_its_deadline() -> None:
    with ThreadServer(llm=SlowLlm(delay=1.0)) as server:
        async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
            body = {"model": "voicebot", "stream": True, "messages": [{"role": "user", "content": "Talk."}]}
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = response.aiter_lines()  # kept: a dropped iterator closes the stream
                assert (await anext(lines)).startswith("data: ")
                started = time.monotonic()
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                    server.state.drain(1.0), server.server_loop()))
                took = time.monotonic() - started
                assert 0.9 < took < 6, took
                assert server.state.replying  # still generating: the deadline, not the reply, ended it
