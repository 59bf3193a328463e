"""Drive a Realtime server like a person would, through the official ``openai`` SDK.

A microphone never stops: audio (speech, then silence) is streamed at real-time pace in 20 ms
chunks while every server event is recorded with its arrival time. Used by the e2e tests and by
scripts/bench_latency.py, so the benchmark measures exactly what the tests prove.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr
from openai import AsyncOpenAI

CHUNK_MS = 20
RATE = 24_000


def to_pcm24k(samples16k: np.ndarray) -> bytes:
    out = soxr.resample(samples16k.astype(np.float32) / 32768, 16_000, RATE, quality="HQ")
    return (np.clip(out, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()


def silence24k(ms: float) -> bytes:
    return bytes(int(RATE * ms / 1000) * 2)


@dataclass
class Recorder:
    """Every server event with its arrival time (time.monotonic())."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: dict[str, Any]) -> None:
        self.events.append((time.monotonic(), event))
        self.changed.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    def timed(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if e["type"] == kind]

    async def wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            while not (result := predicate()):
                self.changed.clear()
                await self.changed.wait()
        return result

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 60) -> dict[str, Any]:
        await self.wait(lambda: len(self.of(kind)) >= count, timeout)
        return self.of(kind)[count - 1]


class Microphone:
    """Streams queued audio at real-time pace, and silence whenever nothing is queued."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.queue: list[tuple[bytes, asyncio.Future[float], list[float]]] = []
        self.sent_ms = 0.0

    def say(self, pcm: bytes) -> asyncio.Future[float]:
        """Queue audio; the future resolves to the wall time its first sample was sent."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.queue.append((pcm, fut, []))
        return fut

    async def run(self) -> None:
        step = RATE * 2 * CHUNK_MS // 1000
        start = time.monotonic()
        buffered = b""
        while True:
            if not buffered and self.queue:
                pcm, fut, _ = self.queue.pop(0)
                buffered = pcm
                fut.set_result(time.monotonic())
            chunk, buffered = (buffered[:step], buffered[step:]) if buffered else (bytes(step), b"")
            chunk = chunk.ljust(step, b"\0")
            await self.conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
            self.sent_ms += CHUNK_MS
            delay = start + self.sent_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


async def receive_into(conn: Any, recorder: Recorder) -> None:
    async for event in conn:
        recorder.add(event.model_dump(mode="json", exclude_none=False))


def client(http_base: str, api_key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=api_key, base_url=f"{http_base}/v1", max_retries=0)


def audio_of(recorder: Recorder, response_id: str) -> np.ndarray:
    """The assistant audio of one response as int16 at 24 kHz."""
    data = b"".join(base64.b64decode(e["delta"]) for e in recorder.of("response.output_audio.delta")
                    if e["response_id"] == response_id)
    return np.frombuffer(data, dtype="<i2")


def to16k(samples24k: np.ndarray) -> np.ndarray:
    out = soxr.resample(samples24k.astype(np.float32) / 32768, RATE, 16_000, quality="HQ")
    return out.astype(np.float32)
