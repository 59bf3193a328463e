"""A simulated person on a Realtime session: a mouth, ears, and (optionally) a leaky speaker.

Every 20 ms of wall clock the caller plays 20 ms of the assistant's audio (a playout buffer fed
by ``response.output_audio.delta``, like a browser's) and sends 20 ms of microphone audio: the
speech it was asked to say (or silence), plus background noise if set, plus — to model an
imperfect echo canceller or a speakerphone — what its own speaker played ``echo_delay_ms`` ago,
``echo_db`` below full scale. On ``input_audio_buffer.speech_started`` it drops what it still had
buffered and sends ``conversation.item.truncate`` with what it really played, as a good client
does. It counts playback underruns: a response's audio running dry before the response's audio is
complete. All through the official ``openai`` SDK; every event is recorded with its arrival time.

Used by scripts/bench_latency.py and scripts/bench_sessions.py.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr

from tests.realtime_client import Recorder

RATE = 24_000
TICK_MS = 20
TICK = RATE * TICK_MS // 1000


def to24k(samples16k: np.ndarray) -> np.ndarray:
    """int16 16 kHz -> float32 24 kHz in [-1, 1]."""
    return soxr.resample(samples16k.astype(np.float32) / 32768, 16_000, RATE, quality="HQ").astype(np.float32)


@dataclass
class Playback:
    """The caller's ears: a jitter buffer played at real time, per response."""

    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    response_id: str | None = None
    item_id: str | None = None
    item_played_ms: float = 0.0
    audio_done: set[str] = field(default_factory=set)  # responses whose audio is complete
    started: dict[str, float] = field(default_factory=dict)  # response id -> first sample played
    underruns: dict[str, int] = field(default_factory=dict)  # response id -> gaps while playing
    _dry: bool = False

    def push(self, response_id: str, item_id: str, pcm: np.ndarray) -> None:
        if response_id != self.response_id:
            self.response_id, self.item_id, self.item_played_ms = response_id, item_id, 0.0
            self._dry = False
        self.buffer = np.concatenate((self.buffer, pcm))

    def take(self, now: float) -> np.ndarray:
        out = np.zeros(TICK, np.float32)
        n = min(TICK, self.buffer.size)
        out[:n] = self.buffer[:n]
        self.buffer = self.buffer[n:]
        rid = self.response_id
        if rid is not None and n:
            self.started.setdefault(rid, now)
            self.item_played_ms += n * 1000 / RATE
            self._dry = False
        elif rid is not None and rid in self.started and rid not in self.audio_done and not self._dry:
            self.underruns[rid] = self.underruns.get(rid, 0) + 1  # ran dry mid-response
            self._dry = True
        return out

    def flush(self) -> None:
        self.buffer = np.zeros(0, np.float32)
        if self.response_id is not None:
            self.audio_done.add(self.response_id)


class Caller:
    def __init__(self, conn: Any, rec: Recorder, *, echo_db: float | None = None, echo_delay_ms: float = 100,
                 truncate_on_barge_in: bool = True) -> None:
        self.conn = conn
        self.rec = rec
        self.echo_gain = None if echo_db is None else 10 ** (echo_db / 20)
        self.echo_delay = int(RATE * echo_delay_ms / 1000)
        self.truncate_on_barge_in = truncate_on_barge_in
        self.playback = Playback()
        self._speaker = np.zeros(self.echo_delay + TICK, np.float32)  # what was played, newest last
        self._speech: list[tuple[np.ndarray, asyncio.Future[float]]] = []
        self._speaking = np.zeros(0, np.float32)
        self.noise: np.ndarray | None = None  # float32 24 kHz, looped while set
        self._noise_pos = 0
        self.sent_ms = 0.0

    # --- mouth ---------------------------------------------------------------------------------

    def say(self, samples16k: np.ndarray) -> asyncio.Future[float]:
        """Queue speech; resolves to the wall time its first sample was sent."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._speech.append((to24k(samples16k), fut))
        return fut

    def _mic(self) -> np.ndarray:
        if not self._speaking.size and self._speech:
            self._speaking, fut = self._speech.pop(0)
            if not fut.done():
                fut.set_result(time.monotonic())
        chunk = np.zeros(TICK, np.float32)
        n = min(TICK, self._speaking.size)
        chunk[:n] = self._speaking[:n]
        self._speaking = self._speaking[n:]
        if self.noise is not None:
            idx = (self._noise_pos + np.arange(TICK)) % self.noise.size
            chunk += self.noise[idx]
            self._noise_pos = int((self._noise_pos + TICK) % self.noise.size)
        if self.echo_gain is not None:
            chunk += self._speaker[:TICK] * self.echo_gain  # played echo_delay ago
        return chunk

    async def run(self) -> None:
        """The 20 ms loop: play a tick, then send a tick of microphone audio, on a real-time clock."""
        start = time.monotonic()
        while True:
            played = self.playback.take(time.monotonic())
            self._speaker = np.concatenate((self._speaker[TICK:], played))
            mic = np.clip(self._mic(), -1, 1 - 1 / 32768)
            pcm = (mic * 32768).astype("<i2").tobytes()
            await self.conn.input_audio_buffer.append(audio=base64.b64encode(pcm).decode())
            self.sent_ms += TICK_MS
            delay = start + self.sent_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    # --- ears ----------------------------------------------------------------------------------

    async def receive(self) -> None:
        async for event in self.conn:
            data = event.model_dump(mode="json", exclude_none=False)
            self.rec.add(data)
            await self._on_event(data)

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "response.output_audio.delta":
            pcm = np.frombuffer(base64.b64decode(event["delta"]), "<i2").astype(np.float32) / 32768
            self.playback.push(event["response_id"], event["item_id"], pcm)
        elif kind == "response.output_audio.done":
            self.playback.audio_done.add(event["response_id"])
        elif kind == "input_audio_buffer.speech_started":
            playback = self.playback
            was_playing = playback.buffer.size > 0
            item, played = playback.item_id, playback.item_played_ms
            playback.flush()
            if was_playing and item is not None and self.truncate_on_barge_in:
                await self.conn.conversation.item.truncate(item_id=item, content_index=0, audio_end_ms=int(played))
