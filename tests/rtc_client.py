"""An aiortc peer that calls voicebot over WebRTC like a browser would.

A microphone track streams queued speech (then silence, forever) at real-time pace; the
``oai-events`` data channel records every server event with its arrival time; every frame of
the assistant's track is kept with its arrival time, so tests and scripts/bench_webrtc.py can
measure what a listener hears. ICE stays on 127.0.0.1 and no STUN server is ever asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from typing import Any

import av
import httpx
import numpy as np
import soxr
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.realtime_client import Recorder
from voicebot.transports.rtc_audio import frame_to_mono
from voicebot.transports.rtc_ice import host_addresses

RATE = 48_000
FRAME = RATE // 50  # 20 ms


def to48k(samples16k: np.ndarray) -> np.ndarray:
    out = soxr.resample(samples16k.astype(np.float32) / 32768, 16_000, RATE, quality="HQ")
    return (np.clip(out, -1, 1 - 1 / 32768) * 32768).astype(np.int16)


def silence48k(ms: float) -> np.ndarray:
    return np.zeros(int(RATE * ms / 1000), np.int16)


class MicTrack(MediaStreamTrack):
    """Queued int16 48 kHz audio, then silence, in 20 ms frames on a real-time clock."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.queue: list[tuple[np.ndarray, asyncio.Future[float]]] = []
        self._buffer = np.zeros(0, np.int16)
        self._start: float | None = None
        self._pts = 0

    def say(self, samples: np.ndarray) -> asyncio.Future[float]:
        """Queue audio; the future resolves to the wall time its first sample left."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.queue.append((samples.astype(np.int16), fut))
        return fut

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += FRAME
            wait = self._start + self._pts / RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
        if self._buffer.size == 0 and self.queue:
            self._buffer, fut = self.queue.pop(0)
            if not fut.done():
                fut.set_result(time.monotonic())
        chunk = np.zeros(FRAME, np.int16)
        n = min(FRAME, self._buffer.size)
        chunk[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


class RtcClient:
    def __init__(self, *, data_channel: bool = True, audio: bool = True) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = MicTrack()
        if audio:
            self.pc.addTrack(self.mic)
        self.recorder = Recorder()
        self.frames: list[tuple[float, np.ndarray]] = []  # (arrival, 20 ms of mono int16 at 48 kHz)
        self.opened = asyncio.Event()
        self.call_id: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self.channel = self.pc.createDataChannel("oai-events") if data_channel else None
        if self.channel is not None:
            self.channel.on("open", self.opened.set)
            self.channel.on("message", lambda m: self.recorder.add(json.loads(m)))
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.frames.append((time.monotonic(), frame_to_mono(frame)))

    async def offer(self) -> str:
        offer = await self.pc.createOffer()
        with host_addresses(["127.0.0.1"]):  # the test peer stays on loopback too
            await self.pc.setLocalDescription(offer)
        return str(self.pc.localDescription.sdp)

    async def connect(self, base: str, key: str | None, *, query: str = "", timeout: float = 20) -> None:
        sdp = await self.offer()
        headers = {"Content-Type": "application/sdp"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        async with httpx.AsyncClient(timeout=timeout) as http:
            r = await http.post(f"{base}/v1/realtime/calls{query}", content=sdp, headers=headers)
        if r.status_code != 201:
            raise RuntimeError(f"call refused: {r.status_code} {r.text}")
        self.call_id = r.headers["location"].rsplit("/", 1)[-1]
        await self.pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
        if self.channel is not None:
            async with asyncio.timeout(timeout):
                await self.opened.wait()

    def send(self, event: dict[str, Any]) -> None:
        assert self.channel is not None
        self.channel.send(json.dumps(event))

    def audio_since(self, t0: float) -> np.ndarray:
        chunks = [f for t, f in self.frames if t >= t0]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def frame_rms(frame: np.ndarray) -> float:
    return float(np.sqrt(np.mean(frame.astype(np.float64) ** 2)))
