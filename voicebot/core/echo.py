"""What the listener's speaker is playing, on the session's clock: the echo canceller's reference.

Sans-I/O: callers pass times (seconds on one monotonic clock). A Session writes every chunk of
assistant audio here at the moment its playout clock says the listener starts playing it, and
the input path asks for the stretch of it that was playing while each piece of microphone audio
was captured. An echo canceller then removes from the microphone what matches that stretch
(allowing for the room's and the network's extra delay), so the assistant does not interrupt
itself when its own voice leaks back — a speakerphone, a laptop without headphones, a phone line.
"""

from __future__ import annotations

import numpy as np

from voicebot.core.types import ENGINE_RATE, Int16Array


class SpeakerTimeline:
    """A bounded window of recent speaker output at ``rate``, addressed by absolute time."""

    def __init__(self, rate: int = ENGINE_RATE, keep_s: float = 3.0) -> None:
        self.rate = rate
        self._keep = int(rate * keep_s)
        self._start = 0  # absolute sample index of _audio[0]
        self._audio: Int16Array = np.zeros(0, np.int16)

    def _index(self, t: float) -> int:
        return round(t * self.rate)

    def play(self, samples: Int16Array, start_s: float) -> None:
        """``samples`` start playing at ``start_s`` (later chunks overwrite what they overlap)."""
        if samples.size == 0:
            return
        begin = self._index(start_s)
        if self._audio.size == 0:
            self._start = begin
        end = begin + samples.size
        if begin < self._start:  # older than what is kept: keep its tail only
            samples = samples[self._start - begin :]
            begin = self._start
        needed = end - self._start
        if needed > self._audio.size:
            self._audio = np.concatenate((self._audio, np.zeros(needed - self._audio.size, np.int16)))
        self._audio[begin - self._start : end - self._start] = samples
        extra = self._audio.size - self._keep
        if extra > 0:
            self._audio = self._audio[extra:]
            self._start += extra

    def window(self, end_s: float, n: int) -> Int16Array:
        """The ``n`` samples that played up to ``end_s`` (silence where nothing did)."""
        out = np.zeros(n, np.int16)
        end = self._index(end_s)
        begin = end - n
        lo, hi = max(begin, self._start), min(end, self._start + self._audio.size)
        if hi > lo:
            out[lo - begin : hi - begin] = self._audio[lo - self._start : hi - self._start]
        return out

    def flush(self, now_s: float) -> None:
        """The listener dropped what it had not played yet (barge-in): it will never play."""
        cut = self._index(now_s) - self._start
        if 0 <= cut < self._audio.size:
            self._audio = self._audio[:cut]


def echo_likeness(mic: Int16Array, speaker: Int16Array) -> float:
    """How much of ``mic`` is a delayed copy of ``speaker`` (0 = none, 1 = all of it).

    ``speaker`` covers the same stretch plus the echo path's delay before it. The largest
    normalised cross-correlation over every lag tells whether an onset heard while the assistant
    talks is its own voice coming back (before an echo canceller has converged, or past one) or a
    person: a person's words do not correlate with the assistant's.
    """
    if mic.size == 0 or speaker.size < mic.size:
        return 0.0
    m = mic.astype(np.float64)
    r = speaker.astype(np.float64)
    m_energy = float(np.dot(m, m))
    if m_energy <= 0.0:
        return 0.0
    n = 1 << int(np.ceil(np.log2(r.size + m.size)))
    corr = np.fft.irfft(np.fft.rfft(r, n) * np.conj(np.fft.rfft(m, n)), n)[: r.size - m.size + 1]
    energy = np.concatenate(([0.0], np.cumsum(r * r)))
    windows = energy[m.size :] - energy[: r.size - m.size + 1]  # the reference's energy at each lag
    score = np.abs(corr) / np.sqrt(m_energy * np.maximum(windows, 1e-9))
    return float(min(1.0, score.max()))


#: The microphone hears the speaker when a quarter second of it is at least this much a copy of
#: what played (an echo through the air correlates ~0.5-0.9; room noise ~0.07, scripts/bench_latency.py).
ECHO_PATH_LIKENESS = 0.25
#: ... and does not after this many quarter seconds of the speaker playing with the microphone
#: neither correlating nor loud (the person silent): a headset, or a client or phone that cancels
#: its own echo (the demo page asks the browser to).
ECHO_FREE_WINDOWS = 3
#: A window where the microphone is within this much of the speaker says nothing about the echo
#: path: the person may be talking over it.
ECHO_FREE_BELOW_DB = 20.0


class EchoPath:
    """Whether the speaker can be heard in the microphone at all.

    AEC3 suppresses the microphone hard while the speaker plays until it has learned the echo
    path; with no echo to learn from (the common case: browsers, phones and headsets cancel
    their own echo) it ducks a person's first second of speech over the assistant by 50-70 dB,
    and the barge-in is heard that late. So turn detection listens to the canceller's output
    only while the microphone is shown to carry the assistant's voice; it starts out assuming it
    does (the side that never interrupts itself)."""

    def __init__(self) -> None:
        self.heard = True
        self._echo_free = 0

    def observe(self, likeness: float, mic_db: float, speaker_db: float) -> None:
        """A quarter second of the speaker playing at ``speaker_db`` while the person was not
        speaking: the microphone at ``mic_db`` was ``likeness`` a copy of it."""
        if likeness >= ECHO_PATH_LIKENESS:
            self.heard, self._echo_free = True, 0
        elif mic_db < speaker_db - ECHO_FREE_BELOW_DB:
            self._echo_free += 1
            if self._echo_free >= ECHO_FREE_WINDOWS:
                self.heard = False
