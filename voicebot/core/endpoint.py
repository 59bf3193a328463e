"""VAD hop scores -> speech started / pause / resumed / stopped events (sans-I/O, no clocks).

The session feeds one :class:`~voicebot.engines.base.VadScores` per 32 ms hop of 16 kHz
input and acts on the events; every time is "ms of input audio since the session's audio
start" (hop index x hop length), so the result depends only on the audio, never on timing.

Why two detectors: webrtcvad (``fast``) answers instantly but says "voice" to keyboard
clicks, fans and the bot's own echo; Silero (``prob``) is robust but must not be trusted on
one hop. A hop is *voiced* when both agree, or when Silero alone is very sure; speech starts
only after ``onset_hops`` voiced hops within ``onset_window`` hops, so a click never barges in.

Ending uses Silero's hysteresis (as in its own VADIterator): in speech, only a hop below
``negative_threshold`` starts the silence timer, in-between hops neither start nor stop it,
and a voiced hop cancels it. Early in the silence, a :class:`PauseStarted` lets the session
transcribe (and start the reply) speculatively, so the ASR and the LLM run during the
end-of-turn silence instead of after it.

Semantic end of turn (``semantic_vad``): a little later in the pause, :class:`JudgeTurn` asks
the session to run a turn model on the speech so far; it answers with :meth:`Endpointer.judged`.
A turn that does not sound complete (probability below ``incomplete_below``) ends only after the
longer ``incomplete_silence_ms``; one that does, or whose verdict is late, ends after
``silence_duration_ms``. The model never *shortens* the silence: a mid-sentence pause of 0.6 s
scores "complete" too often for that (docs/benchmarks.md), so the base silence is what keeps
people from being cut off, and the model lets them think a little longer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from voicebot.core.types import VadScores
from voicebot.errors import VoicebotError

#: The person's level is learned from their last this many voiced hops (~8 s of speech) ...
LEVEL_HOPS = 256
#: ... once there are this many (~1 s): before that, nothing is gated.
MIN_LEVEL_HOPS = 30
#: A barge-in that rose above the level gate only after its first syllables (a soft start, or a
#: client-side echo canceller ducking the microphone while the assistant plays) still begins
#: where its voiced hops began, up to this many hops (~1 s) earlier: the gate decides *whether*
#: someone interrupts, not where their words start, and the transcript needs the first words.
GATED_BACKDATE_HOPS = 31
#: Gated hops this close together (~320 ms: the gaps between words) count as one stretch of voice.
GATED_GAP_HOPS = 10


class EndpointConfigError(VoicebotError, ValueError):
    """Turn-detection settings out of range (e.g. a bad ``session.update``)."""


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Turn-detection settings; the first three mirror the Realtime API's ``server_vad``."""

    threshold: float = 0.5  # Silero probability for "voiced"
    prefix_padding_ms: int = 300  # audio kept before the onset; used by the session, not here
    silence_duration_ms: int = 500  # trailing silence that ends the turn
    # Trailing silence that triggers PauseStarted (0 = never): the transcription and the reply
    # start here, during the silence that must pass anyway before the turn may end.
    speculate_after_ms: int = 64
    onset_hops: int = 2  # voiced hops needed ...
    onset_window: int = 3  # ... within this many consecutive hops to start speech
    # Extra onset debounce: the voiced run must span this long before SpeechStarted. 0 by
    # default because every hop of delay is barge-in latency; raise it on noisy phone lines.
    min_speech_ms: int = 0
    # Semantic end of turn: at this much silence ask the turn model (0 = silence only) ...
    judge_after_ms: int = 0
    # ... and when it says "incomplete" (p below incomplete_below), wait this long instead.
    incomplete_silence_ms: int = 0
    incomplete_below: float = 0.3
    # While the assistant is audible, an onset must be within this many dB of the person's own
    # speaking level (0 = off): distant chatter and leftover echo are speech too, but not theirs.
    barge_in_gate_db: float = 10.0
    # A hop is also voiced when webrtcvad and the quick RNN detector agree (>= quick_threshold) ...
    quick_threshold: float = 0.8
    # ... and while the assistant is audible one voiced hop starts speech (the echo canceller, the
    # level gate and the echo check guard it): every hop is barge-in latency.
    barge_in_onset_hops: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise EndpointConfigError(f"threshold must be between 0 and 1, got {self.threshold}")
        for name in ("prefix_padding_ms", "silence_duration_ms", "speculate_after_ms", "min_speech_ms"):
            if getattr(self, name) < 0:
                raise EndpointConfigError(f"{name} must not be negative")
        if self.silence_duration_ms == 0:
            raise EndpointConfigError("silence_duration_ms must be positive")
        if not 1 <= self.onset_hops <= self.onset_window or self.barge_in_onset_hops < 1:
            raise EndpointConfigError("need 1 <= onset_hops <= onset_window and barge_in_onset_hops >= 1")
        if self.judge_after_ms < 0 or (self.judge_after_ms and self.incomplete_silence_ms < self.silence_duration_ms):
            raise EndpointConfigError("a semantic end of turn needs incomplete_silence_ms >= silence_duration_ms")

    @property
    def negative_threshold(self) -> float:
        """Below this, a hop in speech counts as silence (hysteresis, as in Silero's VADIterator)."""
        return max(self.threshold - 0.15, 0.01)

    @property
    def confident_threshold(self) -> float:
        """At or above this, Silero alone makes a hop voiced, whatever webrtcvad says."""
        return max(self.threshold + 0.25, 0.8)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Confirmed onset; ``audio_start_ms`` is the start of the run's first voiced hop."""

    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class PauseStarted:
    """Trailing silence reached ``speculate_after_ms``: transcribe up to ``audio_end_ms`` now."""

    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class JudgeTurn:
    """Ask the turn model whether the speech up to ``audio_end_ms`` is a complete turn; answer
    with ``Endpointer.judged(pause, probability)``."""

    pause: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """Voice came back after a PauseStarted: the speculative transcription is void."""


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """End of the turn; ``audio_end_ms`` is the end of the last voiced hop."""

    audio_end_ms: int


EndpointEvent = SpeechStarted | PauseStarted | JudgeTurn | SpeechResumed | SpeechStopped


class Endpointer:
    """Feed :meth:`process` one VadScores per hop, in order; act on the events it returns."""

    def __init__(self, config: EndpointConfig | None = None, hop_ms: float = 32.0, *, max_turn_ms: float = 0.0) -> None:
        if hop_ms <= 0:
            raise EndpointConfigError(f"hop_ms must be positive, got {hop_ms}")
        self.config = config or EndpointConfig()
        self.hop_ms = hop_ms
        #: The longest turn (0 = none): speech this long stops as if the person had paused, so the
        #: input buffer of someone who never pauses stays bounded; their next word starts a new turn.
        self.max_turn_ms = max_turn_ms
        self._speech_start = 0  # first hop of the speech in progress
        self._hops = 0  # hops processed so far = index of the next hop
        self._window: deque[int] = deque()  # indexes of recent voiced hops, before onset
        self._run_start: int | None = None  # first voiced hop of a pending (debounced) onset
        self._in_speech = False
        self._last_voiced = 0  # index of the last voiced hop, in speech
        self._silence_start: int | None = None  # first silent hop after it, if any
        self._paused = False  # PauseStarted sent, neither resumed nor stopped yet
        self.guarded = False  # the assistant is audible: onsets must be at the person's level
        self._levels: deque[float] = deque(maxlen=LEVEL_HOPS)  # their recent voiced hops, dBFS
        self._pauses = 0  # pauses judged so far: a late verdict must not land on a later pause
        self._judging: int | None = None  # the pause JudgeTurn was sent for
        self._verdict: float | None = None  # its answer: P(the turn is complete)
        self._gated_start: int | None = None  # first voiced hop the level gate held back, lately
        self._gated_last = 0

    @property
    def position_ms(self) -> int:
        """Audio processed so far: the end of the last hop."""
        return self._ms(self._hops)

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def update(self, config: EndpointConfig) -> None:
        """New settings (``session.update``), effective from the next hop; speech state is kept."""
        self.config = config

    def reset(self) -> None:
        """Forget any speech in progress (e.g. ``input_audio_buffer.clear``); the clock runs on."""
        self._window.clear()
        self._run_start = None
        self._in_speech = False
        self._gated_start = None
        self._end_pause()

    def judged(self, pause: int, probability: float) -> None:
        """The turn model's answer for a JudgeTurn; ignored if that pause is already over."""
        if pause == self._judging:
            self._verdict = probability

    def _end_pause(self) -> None:
        self._silence_start = None
        self._paused = False
        self._judging = None
        self._verdict = None

    def _required_silence_ms(self) -> int:
        cfg = self.config
        if cfg.judge_after_ms and self._verdict is not None and self._verdict < cfg.incomplete_below:
            return cfg.incomplete_silence_ms
        return cfg.silence_duration_ms

    def process(self, scores: VadScores, level_db: float | None = None) -> list[EndpointEvent]:
        """Take the next hop's scores (and its level in dBFS); return the events it caused."""
        hop = self._hops
        self._hops += 1
        cfg = self.config
        voiced = ((scores.prob >= cfg.threshold and scores.fast) or scores.prob >= cfg.confident_threshold
                  or (scores.fast and scores.quick >= cfg.quick_threshold))
        if not self._in_speech:
            if voiced and self._too_quiet_to_interrupt(level_db):
                voiced = False
                if self._gated_start is None or hop - self._gated_last > GATED_GAP_HOPS:
                    self._gated_start = hop
                self._gated_last = hop
            return self._listen(hop, voiced)
        if voiced and level_db is not None and not self.guarded:
            self._learn_level(level_db)
        return self._speak(hop, voiced, scores.prob < cfg.negative_threshold)

    def _too_quiet_to_interrupt(self, level_db: float | None) -> bool:
        gate = self.config.barge_in_gate_db
        if not self.guarded or gate <= 0 or level_db is None:
            return False
        level = self.speaker_level_db()
        return level is not None and level_db < level - gate

    def speaker_level_db(self) -> float | None:
        """How loud the person speaks: the 80th percentile of their last voiced hops (dBFS), so
        their vowels count, not the soft ends of their words; None until enough were heard."""
        if len(self._levels) < MIN_LEVEL_HOPS:
            return None
        return float(np.percentile(self._levels, 80))

    def _learn_level(self, level_db: float) -> None:
        self._levels.append(level_db)

    # -- internals ------------------------------------------------------------------------

    def _ms(self, hops: int) -> int:
        return round(hops * self.hop_ms)

    def _listen(self, hop: int, voiced: bool) -> list[EndpointEvent]:
        cfg = self.config
        if voiced:
            self._window.append(hop)
        while self._window and self._window[0] <= hop - cfg.onset_window:
            self._window.popleft()
        if not self._window:
            self._run_start = None
            return []
        needed = min(cfg.onset_hops, cfg.barge_in_onset_hops) if self.guarded else cfg.onset_hops
        if len(self._window) < needed:
            return []
        if self._run_start is None:
            self._run_start = self._window[0]
        if self._ms(hop + 1) - self._ms(self._run_start) < cfg.min_speech_ms:
            return []
        start, last = self._run_start, self._window[-1]
        gated = self._gated_start
        if gated is not None and start - self._gated_last <= GATED_GAP_HOPS and start - gated <= GATED_BACKDATE_HOPS:
            start = gated
        self._gated_start = None
        self._window.clear()
        self._run_start = None
        self._in_speech = True
        self._speech_start = start
        self._last_voiced = last
        self._end_pause()
        return [SpeechStarted(audio_start_ms=self._ms(start))]

    def _speak(self, hop: int, voiced: bool, silent: bool) -> list[EndpointEvent]:
        cfg = self.config
        if self.max_turn_ms > 0 and self._ms(hop + 1) - self._ms(self._speech_start) >= self.max_turn_ms:
            self._in_speech = False
            self._end_pause()
            return [SpeechStopped(audio_end_ms=self._ms(hop + 1))]
        if voiced:
            self._last_voiced = hop
            resumed = self._paused
            self._end_pause()
            return [SpeechResumed()] if resumed else []
        if silent and self._silence_start is None:
            self._silence_start = hop
        end_ms = self._ms(self._last_voiced + 1)
        events: list[EndpointEvent] = []
        # Speculation counts from the last voiced hop, not from Silero's (slower, hysteretic)
        # silence: being early only costs a transcription that may be thrown away.
        unvoiced_ms = self._ms(hop + 1) - end_ms
        speculate = 0 < cfg.speculate_after_ms < cfg.silence_duration_ms
        if speculate and not self._paused and unvoiced_ms >= cfg.speculate_after_ms:
            self._paused = True
            events.append(PauseStarted(audio_end_ms=end_ms))
        if self._silence_start is None:
            return events  # between the thresholds with no silence yet: still speaking
        silence_ms = self._ms(hop + 1) - self._ms(self._silence_start)
        if silence_ms >= self._required_silence_ms():
            self._in_speech = False
            self._end_pause()
            return [SpeechStopped(audio_end_ms=end_ms)]
        if cfg.judge_after_ms and self._judging is None and silence_ms >= cfg.judge_after_ms:
            self._pauses += 1
            self._judging = self._pauses
            events.append(JudgeTurn(self._judging, end_ms))
        return events
