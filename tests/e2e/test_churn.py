"""Churn: hundreds of WebSocket sessions that drop their TCP connection at random points.

The server runs in this process (tests/thread_server.py: real uvicorn, sockets and app, fake
engines), so afterwards the test can look inside it: no session left in ``state.sessions``, no
asyncio task of a session left, no generation still running, the thread count and the RSS back
near their baseline (taken after a warm-up round, which starts the worker threads a server keeps).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
import time
from typing import Any

import websockets

from tests.realtime_client import to_pcm24k
from tests.session.fakes import silence, tone
from tests.speech import goforward
from tests.thread_server import ThreadServer

SESSIONS = 200
AT_ONCE = 8
WARM_UP = 24
RSS_MARGIN_MB = 150
PHASES = ("connect", "mid-append", "mid-response", "text-response")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _append(pcm: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


async def _until(ws: Any, kinds: tuple[str, ...], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while json.loads(await ws.recv())["type"] not in kinds:
            pass


async def _one(server: ThreadServer, phase: str, rng: random.Random, speech: bytes) -> None:
    ws = await websockets.connect(server.url, max_size=None)
    try:
        await _until(ws, ("session.created",))
        if phase == "mid-append":
            step = 4800  # 100 ms at 24 kHz
            for i in range(rng.randint(1, len(speech) // step)):
                await ws.send(_append(speech[i * step : (i + 1) * step]))
        elif phase == "mid-response":
            for i in range(0, 2 * 24_000 * 2, 4800):  # a loud turn, then its end of speech
                await ws.send(_append((tone(700) + silence(900))[i : i + 4800]))
            await _until(ws, rng.choice((("response.created",), ("response.output_audio.delta",))))
        elif phase == "text-response":
            await ws.send(json.dumps({"type": "session.update", "session": {"output_modalities": ["text"]}}))
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me more."}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            await _until(ws, rng.choice((("response.created",), ("response.output_text.delta",))))
    finally:
        ws.transport.abort()  # the TCP connection drops: no close frame, no goodbye


async def _churn(server: ThreadServer, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    speech = to_pcm24k(goforward().samples())
    gate = asyncio.Semaphore(AT_ONCE)
    phases = [PHASES[i % len(PHASES)] for i in range(count)]
    rng.shuffle(phases)

    async def run(phase: str) -> None:
        async with gate:
            await _one(server, phase, random.Random(rng.random()), speech)

    await asyncio.gather(*(run(p) for p in phases))
    return phases


def _server_view(server: ThreadServer) -> dict[str, Any]:
    def look() -> dict[str, Any]:
        tasks = asyncio.all_tasks()
        return {"sessions": len(server.state.sessions), "tasks": len(tasks),
                "session_tasks": sorted(t.get_name() for t in tasks if t.get_name().startswith("sess_")),
                "generating": server.llm.active,
                "asr": server.state.engines.cpu.asr.running, "tts": server.state.engines.cpu.tts.running}
    return server.call(look)


async def _settled(server: ThreadServer, baseline_tasks: int, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = _server_view(server)
        idle = (view["sessions"] == 0 and not view["session_tasks"] and view["generating"] == 0
                and view["asr"] == 0 and view["tts"] == 0 and view["tasks"] <= baseline_tasks)
        if idle or time.monotonic() > deadline:
            return view
        await asyncio.sleep(0.1)


async def test_hundreds_of_sessions_dropped_at_random_points_leave_nothing_behind() -> None:
    with ThreadServer() as server:
        await _churn(server, WARM_UP, seed=1)  # starts the worker threads a server keeps
        await _settled(server, 10**6)
        baseline = _server_view(server)
        threads, rss = threading.active_count(), _rss_mb()

        started = time.monotonic()
        phases = await _churn(server, SESSIONS, seed=11)
        took = time.monotonic() - started
        assert {p: phases.count(p) for p in PHASES} == {p: SESSIONS // len(PHASES) for p in PHASES}

        view = await _settled(server, baseline["tasks"])
        assert view["sessions"] == 0, view
        assert view["session_tasks"] == [], view
        assert view["generating"] == 0 and view["asr"] == 0 and view["tts"] == 0, view
        assert view["tasks"] <= baseline["tasks"], (view, baseline)
        assert threading.active_count() <= threads + 2, (threading.active_count(), threads)
        assert _rss_mb() - rss < RSS_MARGIN_MB, (_rss_mb(), rss)
        # The server still serves: one more session is answered.
        async with websockets.connect(server.url) as ws:
            await _until(ws, ("session.created",))
        assert took < 100, took
