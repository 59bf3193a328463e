"""Audio between aiortc tracks and a Session: a real-time outbound track, an inbound reader.

Outbound, :class:`PlayoutTrack` is the "speaker" the reply pipeline feeds: the Session paces its
audio deltas ``output_lead_ms`` ahead of real time, the track queues them and hands aiortc one
20 ms frame per 20 ms of wall clock (the RTP clock must advance in real time), and plays
silence whenever the queue is empty so the RTP stream never stalls. Because everything still
to be played sits in this one queue, barge-in is :meth:`PlayoutTrack.clear`: what has not left
yet is gone at once — at most the frame being encoded and the peer's jitter buffer still play.

Inbound, :func:`read_track` pulls decoded frames (aiortc decodes Opus to 48 kHz s16 stereo in
its own thread) and :class:`InboundAudio` downmixes and resamples them to the 16 kHz mono the
VAD and ASR want, with the same low-latency soxr engine the WebSocket input path uses.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voicebot.core.audio import ENGINE_RATE, Int16Array, StreamResampler, float32_to_int16

log = logging.getLogger(__name__)

RTC_RATE = 48_000  # Opus always runs at 48 kHz
FRAME_MS = 20
FRAME_SAMPLES = RTC_RATE * FRAME_MS // 1000
#: Far above anything a paced reply queues (``webrtc_output_lead_ms`` + one 100 ms delta); only a
#: caller that ignores pacing reaches it, and then newer audio is dropped and counted.
MAX_QUEUE_MS = 10_000
_TIME_BASE = fractions.Fraction(1, RTC_RATE)


@dataclass
class _Chunk:
    samples: Int16Array
    response_id: str | None


class PlayoutTrack(MediaStreamTrack):
    """An outbound audio track with a droppable queue, paced by a 20 ms playout clock.

    ``on_started(response_id)`` fires when audio of a response begins to leave after silence (or
    after another response's audio); ``on_drained(response_id)`` when the queue runs dry after
    it. Both are called from :meth:`recv`, i.e. on the event loop.
    """

    kind = "audio"

    def __init__(self, *, on_started: Callable[[str | None], None] = lambda rid: None,
                 on_drained: Callable[[str | None], None] = lambda rid: None,
                 max_queue_ms: int = MAX_QUEUE_MS) -> None:
        super().__init__()
        self._queue: deque[_Chunk] = deque()
        self._queued = 0  # samples in the queue
        self._max_samples = RTC_RATE * max_queue_ms // 1000
        self._on_started = on_started
        self._on_drained = on_drained
        self._playing = False
        self._rid: str | None = None  # the response whose audio is playing
        self._start: float | None = None
        self._pts = 0
        self.frames = 0
        self.audible_frames = 0
        self.dropped_ms = 0.0  # overflow + cleared audio
        self.cleared = 0

    @property
    def queued_ms(self) -> float:
        return self._queued * 1000 / RTC_RATE

    @property
    def playing(self) -> bool:
        return self._playing

    def push(self, samples: Int16Array, response_id: str | None = None) -> None:
        """Queue 48 kHz mono samples for playout (any length)."""
        if samples.size == 0:
            return
        if self._queued + samples.size > self._max_samples:
            self.dropped_ms += samples.size * 1000 / RTC_RATE
            log.warning("outbound audio queue full (%.0f ms); dropping %d samples",
                        self.queued_ms, samples.size)
            return
        self._queue.append(_Chunk(samples, response_id))
        self._queued += samples.size

    def clear(self) -> float:
        """Drop everything not yet played (barge-in); return how many ms were dropped."""
        dropped = self.queued_ms
        self._queue.clear()
        self._queued = 0
        self.dropped_ms += dropped
        self.cleared += 1
        self._stop_playing()
        return dropped

    def _stop_playing(self) -> None:
        if self._playing:
            self._playing = False
            self._on_drained(self._rid)

    def _take(self) -> tuple[Int16Array, str | None]:
        """The next 20 ms of queued audio, zero-padded; the response id of its first sample."""
        out = np.zeros(FRAME_SAMPLES, np.int16)
        filled = 0
        rid: str | None = None
        while filled < FRAME_SAMPLES and self._queue:
            chunk = self._queue[0]
            if filled == 0:
                rid = chunk.response_id
            n = min(FRAME_SAMPLES - filled, chunk.samples.size)
            out[filled : filled + n] = chunk.samples[:n]
            filled += n
            if n == chunk.samples.size:
                self._queue.popleft()
            else:
                chunk.samples = chunk.samples[n:]
        self._queued -= filled
        if filled:
            self.audible_frames += 1
            if self._playing and rid != self._rid:
                self._stop_playing()  # the next response starts right after this one
            if not self._playing:
                self._playing, self._rid = True, rid
                self._on_started(rid)
        else:
            self._stop_playing()
        return out, rid

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        # The playout clock: frame n leaves at start + n * 20 ms, whatever the queue holds.
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / RTC_RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
        samples, _ = self._take()
        self.frames += 1
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RTC_RATE
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        return frame


def frame_to_mono(frame: av.AudioFrame) -> Int16Array:
    """A decoded frame (packed or planar, int16 or float, any channel count) -> mono int16."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    planes = data.reshape(channels, -1) if frame.format.is_planar else data.reshape(-1, channels).T
    if planes.dtype.kind == "f":
        return float32_to_int16(planes.astype(np.float32).mean(axis=0))
    mono: Int16Array = planes[0].astype(np.int16) if channels == 1 else (
        planes.astype(np.int32).mean(axis=0).astype(np.int16))
    return mono


class InboundAudio:
    """Decoded peer frames -> 16 kHz mono int16, one stream (the resampler keeps state)."""

    def __init__(self) -> None:
        self._resampler: StreamResampler | None = None

    def feed(self, frame: av.AudioFrame) -> Int16Array:
        rate = int(frame.sample_rate)
        if self._resampler is None or self._resampler.in_rate != rate:
            # Low-latency engine: its delay adds to speech onset, i.e. to barge-in latency.
            self._resampler = StreamResampler(rate, ENGINE_RATE, low_latency=True)
        return self._resampler.process(frame_to_mono(frame))


async def read_track(track: MediaStreamTrack, sink: Callable[[Int16Array], Awaitable[None] | None]) -> None:
    """Feed every frame of a remote audio track to ``sink`` as 16 kHz mono, until the track ends."""
    inbound = InboundAudio()
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if not isinstance(frame, av.AudioFrame):
            continue
        result = sink(inbound.feed(frame))
        if result is not None:
            await result
