"""The input audio buffer: 16 kHz samples addressed by stream time, with bounded memory."""

from __future__ import annotations

import numpy as np

from voicebot.core.types import ENGINE_RATE, Int16Array

_SAMPLES_PER_MS = ENGINE_RATE / 1000


class PcmBuffer:
    """Keeps samples from ``start_ms`` up to the stream position; older audio can be dropped.

    Times are stream times (ms since the session's first input sample), the same clock the
    endpointer and the Realtime ``audio_start_ms``/``audio_end_ms`` fields use.
    """

    def __init__(self) -> None:
        self._chunks: list[Int16Array] = []
        self._start_sample = 0  # stream index of the first kept sample
        self._kept = 0

    @property
    def start_ms(self) -> float:
        return self._start_sample / _SAMPLES_PER_MS

    @property
    def end_ms(self) -> float:
        return (self._start_sample + self._kept) / _SAMPLES_PER_MS

    @property
    def duration_ms(self) -> float:
        return self._kept / _SAMPLES_PER_MS

    def append(self, samples: Int16Array) -> None:
        if samples.size:
            self._chunks.append(samples)
            self._kept += int(samples.size)

    def _compact(self) -> Int16Array:
        if len(self._chunks) != 1:
            joined = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            self._chunks = [joined] if joined.size else []
            return joined
        return self._chunks[0]

    def slice(self, from_ms: float, to_ms: float | None = None) -> Int16Array:
        """A copy of the samples between two stream times (clamped to what is kept)."""
        data = self._compact()
        lo = max(0, round(from_ms * _SAMPLES_PER_MS) - self._start_sample)
        hi = self._kept if to_ms is None else max(lo, round(to_ms * _SAMPLES_PER_MS) - self._start_sample)
        return data[lo:hi].copy()

    def drop_before(self, ms: float) -> None:
        """Forget audio older than ``ms`` (keeps memory bounded while nobody speaks)."""
        cut = round(ms * _SAMPLES_PER_MS) - self._start_sample
        if cut <= 0:
            return
        data = self._compact()
        cut = min(cut, self._kept)
        rest = data[cut:]
        self._chunks = [rest] if rest.size else []
        self._start_sample += cut
        self._kept -= cut

    def clear(self) -> None:
        self.drop_before(self.end_ms)
