"""A session's ear: input audio in any format -> the 16 kHz input buffer -> VAD -> endpoint events.

One input path for every transport: a Realtime client's ``input_audio_buffer.append`` bytes, a
WebRTC track's decoded frames and a carrier's μ-law all arrive here as bytes with their format;
:class:`~voicebot.core.audio.InputAudio` decodes and resamples them (band-limited, low-latency
soxr), the buffer keeps them by stream time, and the VAD + endpointer turn them into
speech started / pause / resumed / stopped. No decision is taken here: the Session acts on the
events. The VAD runs inline (a few microseconds per 32 ms hop), so this never blocks the loop.
"""

from __future__ import annotations

import numpy as np

from voicebot.core.audio import AudioFormat, InputAudio, int16_to_float32
from voicebot.core.buffer import PcmBuffer
from voicebot.core.endpoint import EndpointConfig, Endpointer, EndpointEvent
from voicebot.core.types import Int16Array
from voicebot.engines.base import VoiceActivityDetector

#: With turn detection off the client commits when it likes; keep at most this much meanwhile.
MAX_MANUAL_BUFFER_MS = 15 * 60 * 1000
#: Audio kept before a speech onset beyond the prefix padding, while nobody speaks.
IDLE_KEEP_MS = 1000


class Hearing:
    def __init__(self, vad: VoiceActivityDetector, endpoint: EndpointConfig | None) -> None:
        self._vad = vad
        self.endpoint = endpoint  # None = no turn detection (the client commits)
        self._endpointer = Endpointer(endpoint or EndpointConfig())
        self._input: InputAudio | None = None
        self._hop: Int16Array = np.zeros(0, np.int16)
        self.buffer = PcmBuffer()
        self.speech_start_ms: float | None = None  # onset of the speech in progress, if any

    def configure(self, endpoint: EndpointConfig | None) -> None:
        """New turn detection (``session.update``); speech in progress is kept."""
        self.endpoint = endpoint
        if endpoint is not None:
            self._endpointer.update(endpoint)

    def feed(self, data: bytes, fmt: AudioFormat) -> list[EndpointEvent]:
        """Audio in ``fmt`` (any length): buffer it and return what turn detection made of it.

        Raises AudioFormatError (a ValueError) for bytes that do not fit the format.
        """
        if self._input is None or self._input.fmt != fmt:
            self._input = InputAudio(fmt)
        samples = self._input.feed(data)
        self.buffer.append(samples)
        if self.endpoint is None:
            if self.buffer.duration_ms > MAX_MANUAL_BUFFER_MS:
                self.buffer.drop_before(self.buffer.end_ms - MAX_MANUAL_BUFFER_MS)
            return []
        hop_size = self._vad.hop_samples
        pending = np.concatenate((self._hop, samples)) if self._hop.size else samples
        usable = pending.size - pending.size % hop_size
        events: list[EndpointEvent] = []
        for start in range(0, usable, hop_size):
            scores = self._vad.score(int16_to_float32(pending[start : start + hop_size]))
            events.extend(self._endpointer.process(scores))
        self._hop = pending[usable:].copy()
        self._trim_idle_buffer()
        return events

    def _trim_idle_buffer(self) -> None:
        if self.speech_start_ms is not None or self.endpoint is None:
            return
        keep_ms = self.endpoint.prefix_padding_ms + IDLE_KEEP_MS
        if self.buffer.duration_ms > keep_ms + 2000:  # trim in batches: compaction copies
            self.buffer.drop_before(self.buffer.end_ms - keep_ms)

    def judged(self, pause: int, probability: float) -> None:
        """The turn model's verdict on a pause (``JudgeTurn``)."""
        self._endpointer.judged(pause, probability)

    def speech_audio(self) -> Int16Array:
        """The speech in progress, with the configured prefix padding before its onset."""
        padding = self.endpoint.prefix_padding_ms if self.endpoint is not None else 0
        return self.buffer.slice((self.speech_start_ms or 0.0) - padding)

    def take(self, audio_from_speech: bool) -> Int16Array:
        """The audio of the turn that ends now (the speech, or all buffered audio), emptying the buffer."""
        audio = self.speech_audio() if audio_from_speech else self.buffer.slice(self.buffer.start_ms)
        self.speech_start_ms = None
        self.buffer.clear()
        return audio

    def clear(self) -> None:
        """``input_audio_buffer.clear``: forget the buffer and any speech in progress."""
        self.buffer.clear()
        self._hop = np.zeros(0, np.int16)
        self._endpointer.reset()
        self.speech_start_ms = None
