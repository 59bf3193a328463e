"""Audio between aiortc tracks and a Session: a real-time outbound track, an inbound frame reader.

Outbound, :class:`PlayoutTrack` is the "speaker" the session's sink feeds. The reply pipeline
already paces its chunks on the session's playout clock (``webrtc_output_lead_ms`` ahead); the
track queues them and hands aiortc one 20 ms frame per 20 ms of wall clock — its RTP clock must
advance in real time, so it paces itself on the same :class:`~voicebot.core.playout.PlayoutClock`
with no lead — and plays silence whenever the queue is empty so the RTP stream never stalls.
Because everything still to be played sits in this one queue, barge-in is :meth:`PlayoutTrack.clear`:
what has not left yet is gone at once, at most the frame being encoded and the peer's jitter
buffer still play. The track counts, per item, the audio that has left: the session's exact
``playback_position`` on WebRTC.

Inbound, :func:`read_track` pulls decoded frames (aiortc decodes Opus to 48 kHz, G.711 to
8 kHz, in its own thread) and hands them on as mono PCM bytes with their format, for the same
input path every transport uses (``Session.feed_audio``).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voicebot.core.audio import AudioFormat, float32_to_int16
from voicebot.core.playout import PlayoutClock
from voicebot.core.types import Int16Array

log = logging.getLogger(__name__)

RTC_RATE = 48_000  # Opus always runs at 48 kHz
RTC_FORMAT = AudioFormat("pcm16", RTC_RATE)
FRAME_MS = 20
FRAME_SAMPLES = RTC_RATE * FRAME_MS // 1000
#: Far above anything a paced reply queues (``webrtc_output_lead_ms`` + one chunk); only a caller
#: that ignores pacing reaches it, and then newer audio is dropped and counted.
MAX_QUEUE_MS = 10_000
_TIME_BASE = fractions.Fraction(1, RTC_RATE)
_ITEMS_KEPT = 16  # per-item playback counts kept (the session asks about the latest reply)


@dataclass
class _Chunk:
    samples: Int16Array
    item_id: str | None
    response_id: str | None


class PlayoutTrack(MediaStreamTrack):
    """An outbound audio track with a droppable queue, paced in real time.

    ``on_started(response_id)`` fires when audio of a response begins to leave (once per
    response); ``on_stopped(response_id)`` when that response's audio is over: played to the end
    after :meth:`end`, cleared, or followed by another response's audio. Both are called from
    :meth:`recv` or :meth:`clear`, i.e. on the event loop.
    """

    kind = "audio"

    def __init__(self, *, on_started: Callable[[str], None] = lambda rid: None,
                 on_stopped: Callable[[str], None] = lambda rid: None,
                 max_queue_ms: int = MAX_QUEUE_MS) -> None:
        super().__init__()
        self._queue: deque[_Chunk] = deque()
        self._queued = 0  # samples in the queue
        self._max_samples = RTC_RATE * max_queue_ms // 1000
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._audible: str | None = None  # the response whose audio is leaving (started, not stopped)
        self._ended: set[str] = set()  # responses whose last chunk has been pushed
        self._played: OrderedDict[str, int] = OrderedDict()  # item id -> samples that left the track
        self._clock = PlayoutClock(lead_ms=0)  # frame n leaves once frame n-1 has "played"
        self._pts = -FRAME_SAMPLES
        self.frames = 0
        self.audible_frames = 0
        self.dropped_ms = 0.0  # overflow + cleared audio
        self.cleared = 0

    @property
    def queued_ms(self) -> float:
        return self._queued * 1000 / RTC_RATE

    def push(self, samples: Int16Array, item_id: str | None = None, response_id: str | None = None) -> None:
        """Queue 48 kHz mono samples for playout (any length)."""
        if samples.size == 0:
            return
        if self._queued + samples.size > self._max_samples:
            self.dropped_ms += samples.size * 1000 / RTC_RATE
            log.warning("outbound audio queue full (%.0f ms); dropping %d samples", self.queued_ms, samples.size)
            return
        self._queue.append(_Chunk(samples, item_id, response_id))
        self._queued += samples.size

    def end(self, response_id: str) -> None:
        """Every chunk of this response is queued: it stops once they have left."""
        self._ended.add(response_id)
        if len(self._ended) > 64:  # responses that never played audio
            self._ended = {r for r in self._ended if r == self._audible}

    def played_ms(self, item_id: str) -> float:
        """Audio of this item that has left the track (the listener's jitter buffer aside)."""
        return self._played.get(item_id, 0) * 1000 / RTC_RATE

    def clear(self) -> float:
        """Drop everything not yet played (barge-in); return how many ms were dropped."""
        dropped = self.queued_ms
        self._queue.clear()
        self._queued = 0
        self.dropped_ms += dropped
        self.cleared += 1
        self._stop_audible()
        return dropped

    def _stop_audible(self) -> None:
        rid, self._audible = self._audible, None
        if rid is not None:
            self._ended.discard(rid)
            self._on_stopped(rid)

    def _count(self, item_id: str | None, samples: int) -> None:
        if item_id is None:
            return
        self._played[item_id] = self._played.get(item_id, 0) + samples
        self._played.move_to_end(item_id)
        while len(self._played) > _ITEMS_KEPT:
            self._played.popitem(last=False)

    def _take(self) -> Int16Array:
        """The next 20 ms of queued audio, zero-padded."""
        out = np.zeros(FRAME_SAMPLES, np.int16)
        filled = 0
        while filled < FRAME_SAMPLES and self._queue:
            chunk = self._queue[0]
            if chunk.response_id is not None and chunk.response_id != self._audible:
                self._stop_audible()  # the next response starts right after this one
                self._audible = chunk.response_id
                self._on_started(chunk.response_id)
            n = min(FRAME_SAMPLES - filled, chunk.samples.size)
            out[filled : filled + n] = chunk.samples[:n]
            filled += n
            self._count(chunk.item_id, n)
            if n == chunk.samples.size:
                self._queue.popleft()
            else:
                chunk.samples = chunk.samples[n:]
        self._queued -= filled
        if filled:
            self.audible_frames += 1
        elif self._audible in self._ended:  # an underrun mid-response is not the end of its audio
            self._stop_audible()
        return out

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        # The RTP clock: a frame leaves when the previous one has played, whatever the queue holds.
        now = time.monotonic()
        wait = self._clock.delay_before_send(now)
        if wait > 0:
            await asyncio.sleep(wait)
        self._clock.sent(FRAME_MS, now)  # on the schedule, not on the (late) wake-up: no drift
        samples = self._take()
        self.frames += 1
        self._pts += FRAME_SAMPLES
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


async def read_track(track: MediaStreamTrack,
                     sink: Callable[[bytes, AudioFormat], Awaitable[None] | None]) -> None:
    """Hand every frame of a remote audio track to ``sink`` as mono PCM16 bytes in the frame's own
    rate, until the track ends."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if not isinstance(frame, av.AudioFrame):
            continue
        mono = frame_to_mono(frame)
        result = sink(mono.astype("<i2", copy=False).tobytes(), AudioFormat("pcm16", int(frame.sample_rate)))
        if result is not None:
            await result
