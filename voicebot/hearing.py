"""A session's ear: input audio in any format -> the 16 kHz input buffer -> VAD -> endpoint events.

One input path for every transport: a Realtime client's ``input_audio_buffer.append`` bytes, a
WebRTC track's decoded frames and a carrier's μ-law all arrive here as bytes with their format;
:class:`~voicebot.core.audio.InputAudio` decodes and resamples them (band-limited, low-latency
soxr), the buffer keeps them by stream time, and the VAD + endpointer turn them into
speech started / pause / resumed / stopped. No decision is taken here: the Session acts on the
events. The VAD runs inline (a few microseconds per 32 ms hop), so this never blocks the loop.
"""

from __future__ import annotations

import logging

import numpy as np

from voicebot.core.audio import AudioFormat, InputAudio, int16_to_float32
from voicebot.core.buffer import PcmBuffer
from voicebot.core.echo import EchoPath, SpeakerTimeline, echo_likeness
from voicebot.core.endpoint import (
    GATED_BACKDATE_HOPS,
    GATED_GAP_HOPS,
    EndpointConfig,
    Endpointer,
    EndpointEvent,
    SpeechStarted,
)
from voicebot.core.types import ENGINE_RATE, Float32Array, Int16Array
from voicebot.engines.base import EchoCanceller, VoiceActivityDetector
from voicebot.errors import VoicebotError

log = logging.getLogger(__name__)

#: With turn detection off the client commits when it likes; more than this (or than
#: --max-turn-seconds) waiting uncommitted is refused.
MAX_MANUAL_BUFFER_MS = 15 * 60 * 1000
#: Audio kept before a speech onset beyond the prefix padding, while nobody speaks.
IDLE_KEEP_MS = 1000
#: An onset heard while the assistant talks is compared with what it played: the last 250 ms of
#: microphone against the speaker, up to 350 ms of echo delay earlier; above this likeness it is
#: the assistant's own voice (a person's words do not correlate with it; scripts/bench_latency.py).
ECHO_CHECK_SAMPLES = ENGINE_RATE // 4
ECHO_MAX_LAG_SAMPLES = ENGINE_RATE * 35 // 100
ECHO_LIKENESS = 0.5
#: The speaker counts as playing (for learning whether the microphone hears it) above this level.
SPEAKER_PLAYING_DBFS = -45.0
#: A barge-in begins where the raw microphone first came within this much of the person's level
#: (the issue's onset: within 20 dB of the utterance's peak), searched back as far as the
#: endpointer backdates a gated onset.
VOICE_FLOOR_DB = 20.0


class BufferFull(VoicebotError):
    """Turn detection is off and the uncommitted input audio is at its cap: the audio is refused."""


def level_dbfs(hop: Float32Array) -> float:
    return float(10 * np.log10(np.mean(np.square(hop, dtype=np.float64)) + 1e-10))


class Hearing:
    def __init__(self, vad: VoiceActivityDetector, endpoint: EndpointConfig | None,
                 echo: tuple[EchoCanceller, SpeakerTimeline] | None = None, *, max_turn_ms: float = 0.0) -> None:
        """``max_turn_ms``: the longest user turn (0 = none): continuous speech that long ends the
        turn, and with turn detection off no more than that (at most MAX_MANUAL_BUFFER_MS) is buffered."""
        self._vad = vad
        self._echo = echo  # the canceller, and what the listener's speaker played (its reference)
        self._near: Int16Array = np.zeros(0, np.int16)  # less than one echo-canceller frame
        self._raw_end = 0.0  # when the newest microphone audio in the buffer was captured, on the speaker's clock
        self.endpoint = endpoint  # None = no turn detection (the client commits)
        self._endpointer = Endpointer(endpoint or EndpointConfig(), max_turn_ms=max_turn_ms)
        self.max_buffer_ms = min(max_turn_ms, MAX_MANUAL_BUFFER_MS) if max_turn_ms > 0 else MAX_MANUAL_BUFFER_MS
        self._input: InputAudio | None = None
        self._hop: Int16Array = np.zeros(0, np.int16)
        self.buffer = PcmBuffer()
        self.speech_start_ms: float | None = None  # onset of the speech in progress, if any
        self.echo_onsets_rejected = 0
        self.echo_path = EchoPath()  # does the microphone hear the speaker at all?
        self._echo_path_checked_ms = 0.0

    def configure(self, endpoint: EndpointConfig | None) -> None:
        """New turn detection (``session.update``); speech in progress is kept."""
        self.endpoint = endpoint
        if endpoint is not None:
            self._endpointer.update(endpoint)

    def feed(self, data: bytes, fmt: AudioFormat, now: float) -> list[EndpointEvent]:
        """Audio in ``fmt`` (any length) that arrived at ``now``: buffer it and return what turn
        detection made of it. Raises AudioFormatError (a ValueError) for bytes that do not fit."""
        if self._input is None or self._input.fmt != fmt:
            self._input = InputAudio(fmt)
        samples = self._input.feed(data)
        if self.endpoint is None and self.buffer.duration_ms + samples.size * 1000 / ENGINE_RATE > self.max_buffer_ms:
            raise BufferFull(f"The input audio buffer holds {self.buffer.duration_ms / 1000:.1f} s, the most allowed "
                             f"is {self.max_buffer_ms / 1000:g} s: commit (input_audio_buffer.commit) or clear it "
                             "before appending more.")
        if self._echo is not None:
            # Turn detection hears the microphone minus the echo (when there is an echo to remove);
            # the transcript gets the microphone itself: AEC3 ducks a voice that starts while the
            # assistant talks (double talk) for its first syllables, which Whisper then never
            # hears, while the person's voice is far above whatever echo is left in the raw signal
            # (the level gate makes sure of that).
            raw, cancelled = self._cancel_echo(samples, now)
            self.buffer.append(raw)
            self._observe_echo_path()
            samples = cancelled if self.echo_path.heard else raw
        else:
            self.buffer.append(samples)
        if self.endpoint is None:
            return []
        hop_size = self._vad.hop_samples
        pending = np.concatenate((self._hop, samples)) if self._hop.size else samples
        usable = pending.size - pending.size % hop_size
        events: list[EndpointEvent] = []
        for start in range(0, usable, hop_size):
            hop = int16_to_float32(pending[start : start + hop_size])
            scores, level = self._vad.score(hop), level_dbfs(hop)
            for event in self._endpointer.process(scores, level):
                if isinstance(event, SpeechStarted) and self._endpointer.guarded:
                    if self._is_own_echo():
                        self._endpointer.reset()  # its own voice came back: not a person, not a turn
                        self.echo_onsets_rejected += 1
                        continue
                    onset = self._voice_onset(event.audio_start_ms)
                    log.debug("barge-in onset: %s at %.1f dBFS (their level %s), voice from %.0f ms (VAD %d ms)",
                              scores, level, self._endpointer.speaker_level_db(), onset, event.audio_start_ms)
                    event = SpeechStarted(audio_start_ms=round(onset))
                events.append(event)
        self._hop = pending[usable:].copy()
        self._trim_idle_buffer()
        return events

    def _is_own_echo(self) -> bool:
        """An onset while the assistant is audible that is a delayed copy of what it plays (the
        echo canceller is still converging, or the echo path just changed)."""
        end = self.buffer.end_ms
        return self._echo_likeness(end - ECHO_CHECK_SAMPLES * 1000 / ENGINE_RATE, end) > ECHO_LIKENESS

    def _observe_echo_path(self) -> None:
        """Every quarter second of the speaker playing while nobody speaks: is it in the microphone?"""
        end = self.buffer.end_ms
        window_ms = ECHO_CHECK_SAMPLES * 1000 / ENGINE_RATE
        if end - self._echo_path_checked_ms < window_ms or self._echo is None:
            return
        self._echo_path_checked_ms = end
        if self._endpointer.in_speech:
            return
        mic, reference = self._mic_and_reference(end - window_ms, end)
        speaker_db = level_dbfs(int16_to_float32(reference))
        if speaker_db >= SPEAKER_PLAYING_DBFS:
            heard = self.echo_path.heard
            self.echo_path.observe(echo_likeness(mic, reference), level_dbfs(int16_to_float32(mic)), speaker_db)
            if self.echo_path.heard != heard:
                log.debug("the microphone %s the speaker: turn detection hears %s", "hears" if not heard else
                          "does not hear", "the echo canceller's output" if not heard else "the microphone")

    def _mic_and_reference(self, from_ms: float, to_ms: float) -> tuple[Int16Array, Int16Array]:
        """The raw microphone from ``from_ms`` to ``to_ms``, and what the speaker played over that
        stretch and the echo path's delay before it."""
        assert self._echo is not None
        _, speaker = self._echo
        # The buffer holds the microphone as it came (before cancelling); its end was captured at _raw_end.
        mic = self.buffer.slice(from_ms, to_ms)
        end_s = self._raw_end - (self.buffer.end_ms - to_ms) / 1000
        return mic, speaker.window(end_s, mic.size + ECHO_MAX_LAG_SAMPLES)

    def _echo_likeness(self, from_ms: float, to_ms: float) -> float:
        """How much the raw microphone from ``from_ms`` to ``to_ms`` is what the speaker played."""
        if self._echo is None:
            return 0.0
        return echo_likeness(*self._mic_and_reference(from_ms, to_ms))

    def _voice_onset(self, vad_onset_ms: float) -> float:
        """Where an interruption's voice began in the raw microphone.

        Turn detection hears the echo canceller's output, and AEC3 ducks the first syllables of a
        voice that starts over the assistant (double talk), so the VAD's onset can come ~0.5 s after
        the words did and the transcript would lose them ("he was not an ill disposed ..." heard
        as "... disposed young man"). Walking back over hops at the person's level that are not a
        copy of what the speaker played finds the start."""
        level = self._endpointer.speaker_level_db()
        if self._echo is None or not self.echo_path.heard or level is None:
            return vad_onset_ms  # turn detection heard the microphone itself
        floor = level - VOICE_FLOOR_DB
        hop_ms = self._vad.hop_samples * 1000 / ENGINE_RATE
        earliest = max(self.buffer.start_ms, vad_onset_ms - GATED_BACKDATE_HOPS * hop_ms)
        onset, t, other = vad_onset_ms, vad_onset_ms - hop_ms, 0
        while t >= earliest and other <= GATED_GAP_HOPS:
            voice = (level_dbfs(int16_to_float32(self.buffer.slice(t, t + hop_ms))) >= floor
                     and self._echo_likeness(t, t + hop_ms) < ECHO_LIKENESS)
            onset, other = (t, 0) if voice else (onset, other + 1)
            t -= hop_ms
        return onset

    def _cancel_echo(self, samples: Int16Array, now: float) -> tuple[Int16Array, Int16Array]:
        """Whole canceller frames of the microphone: as they came, and minus what the speaker was
        playing meanwhile."""
        assert self._echo is not None
        canceller, speaker = self._echo
        near = np.concatenate((self._near, samples)) if self._near.size else samples
        usable = near.size - near.size % canceller.frame_samples
        self._near = near[usable:].copy()
        if not usable:
            return near[:0], near[:0]
        # The held-back remainder is the newest audio: the usable part ended that much earlier.
        end = now - self._near.size / ENGINE_RATE
        far = speaker.window(end, usable)
        self._raw_end = end
        return near[:usable], canceller.process(near[:usable], far)

    def _trim_idle_buffer(self) -> None:
        if self.speech_start_ms is not None or self.endpoint is None:
            return
        keep_ms = self.endpoint.prefix_padding_ms + IDLE_KEEP_MS
        if self.buffer.duration_ms > keep_ms + 2000:  # trim in batches: compaction copies
            self.buffer.drop_before(self.buffer.end_ms - keep_ms)

    def guard(self, assistant_audible: bool) -> None:
        """While the assistant is audible, only speech at the person's own level interrupts it."""
        self._endpointer.guarded = assistant_audible

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
