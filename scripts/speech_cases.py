"""The hard cases of turn-taking, generated from real recordings and from signals: for the benchmarks.

* :func:`paused_utterances` — sentences with a pause in the middle: real pocketsphinx recordings
  split at their longest natural word gap between 25 % and 75 % of the speech, and Piper saying
  "I'd like to book a table for four people." split after "for" (the whole sentence is synthesized,
  so "for" keeps its mid-sentence intonation; Whisper's word timestamps find the gap).
* Background noise at 24 kHz (the caller's rate), float32: :func:`hum` (50 Hz mains with
  harmonics), :func:`clicks`, :func:`keyboard` (short band-passed bursts at typing rhythm) and
  :func:`babble` (five real recordings, overlapped, 20 dB below the caller's speech).
"""

from __future__ import annotations

import functools

import numpy as np

from scripts.caller import RATE, to24k
from tests.speech import all_utterances

_SECONDS = 4.0


def _gap(samples: np.ndarray) -> int | None:
    """Sample index of the middle of the longest quiet run (>= 30 ms) in the middle half of the speech."""
    frame = 160
    n = samples.size // frame
    energy = (samples[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1)
    db = 10 * np.log10(energy + 1e-9)
    voiced = np.flatnonzero(db > db.max() - 30)
    first, last = voiced[0], voiced[-1]
    quiet = db < db.max() - 35
    lo, hi = first + (last - first) // 4, first + 3 * (last - first) // 4
    best: tuple[int, int] | None = None
    run = 0
    for i in range(lo, hi):
        run = run + 1 if quiet[i] else 0
        if run >= 3 and (best is None or run > best[1]):
            best = (i - run // 2, run)
    return None if best is None else best[0] * frame


def _quiet_edges(samples: np.ndarray) -> tuple[int, int]:
    """Samples of quiet (35 dB under the loudest 10 ms frame) at the start and at the end."""
    frame = 160
    n = samples.size // frame
    energy = (samples[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1)
    db = 10 * np.log10(energy + 1e-9)
    loud = np.flatnonzero(db > db.max() - 35)
    return int(loud[0]) * frame, samples.size - (int(loud[-1]) + 1) * frame


def split_for_pause(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two halves without the quiet around the cut, so the pause between them is all silence."""
    _, tail = _quiet_edges(first)
    head, _ = _quiet_edges(second)
    return first[: first.size - tail], second[head:]


@functools.cache
def paused_utterances() -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(speech before the pause, speech after it, the whole text), int16 at 16 kHz.

    The halves are trimmed of the quiet around the cut: inserting N ms between them makes the
    person pause exactly N ms between the two words.
    """
    cases: list[tuple[np.ndarray, np.ndarray, str]] = []
    first, second, text = _book_a_table()
    cases.append((*split_for_pause(first, second), text))
    for u in all_utterances():
        if len(u.text.split()) < 4:
            continue
        samples = u.samples()
        cut = _gap(samples)
        if cut is not None:
            cases.append((*split_for_pause(samples[:cut], samples[cut:]), u.text))
    return cases


LONG_QUESTIONS = (
    "Please tell me a long story about a brave knight and a friendly dragon.",
    "Can you explain in detail how a steam engine works?",
    "Describe your perfect summer holiday by the sea, with every detail.",
    "Tell me everything you know about the history of the bicycle.",
    "What should I see and do on a week long trip to Japan?",
    "Explain how bread is made, from the field to the bakery.",
)


@functools.cache
def long_question(i: int = 0) -> np.ndarray:
    """A question that gets a long answer (Piper's voice; barge-in is measured on the real speech
    that interrupts it). Different ones, so the history does not teach the model to be brief."""
    from voicebot.core.audio import resample
    from voicebot.engines.tts_piper import PiperSynthesizer
    from voicebot.models import piper_voice_path

    text = LONG_QUESTIONS[i % len(LONG_QUESTIONS)]
    return resample(PiperSynthesizer(piper_voice_path()).synthesize(text), 22_050, 16_000)


def _book_a_table() -> tuple[np.ndarray, np.ndarray, str]:
    from faster_whisper import WhisperModel

    from voicebot.core.audio import resample
    from voicebot.engines.tts_piper import PiperSynthesizer
    from voicebot.models import piper_voice_path, whisper_model_dir

    text = "I'd like to book a table for four people."
    speech = resample(PiperSynthesizer(piper_voice_path()).synthesize(text), 22_050, 16_000)
    model = WhisperModel(str(whisper_model_dir("tiny.en")), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(speech.astype(np.float32) / 32768, language="en", word_timestamps=True)
    words = [w for s in segments for w in (s.words or [])]
    after_for = next(w for w in words if w.word.strip().lower() == "for")
    following = words[words.index(after_for) + 1]
    cut = int((after_for.end + following.start) / 2 * 16_000)
    return speech[:cut], speech[cut:], text


def _seconds(seconds: float = _SECONDS) -> np.ndarray:
    return np.arange(int(RATE * seconds)) / RATE


def hum(rms: float = 0.03) -> np.ndarray:
    """Mains hum: 50 Hz and its odd harmonics (a fridge, a bad cable)."""
    t = _seconds()
    x = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 3, 5, 7))
    return (x * rms / np.sqrt(np.mean(x**2))).astype(np.float32)


def clicks(amplitude: float = 0.3, every_s: float = 0.35) -> np.ndarray:
    """Sharp 3 ms clicks (a pen, a mouse button)."""
    x = np.zeros(int(RATE * _SECONDS), np.float32)
    rng = np.random.default_rng(7)
    for start in np.arange(0.1, _SECONDS - 0.01, every_s):
        i = int(start * RATE)
        n = int(0.003 * RATE)
        x[i : i + n] = amplitude * rng.standard_normal(n) * np.exp(-np.arange(n) / (n / 4))
    return x


def keyboard(amplitude: float = 0.2) -> np.ndarray:
    """Typing: 8-15 ms band-passed bursts every 90-220 ms."""
    rng = np.random.default_rng(11)
    x = np.zeros(int(RATE * _SECONDS), np.float32)
    t = 0.05
    while t < _SECONDS - 0.05:
        n = int(rng.uniform(0.008, 0.015) * RATE)
        burst = rng.standard_normal(n)
        burst = np.convolve(burst, np.ones(4) / 4, "same") - np.convolve(burst, np.ones(24) / 24, "same")
        i = int(t * RATE)
        x[i : i + n] += (amplitude * burst * np.hanning(n)).astype(np.float32)
        t += rng.uniform(0.09, 0.22)
    return x


def babble(db_below_speech: float = 20) -> np.ndarray:
    """Distant chatter: five real recordings overlapped, ``db_below_speech`` under the caller's level."""
    voices = [to24k(u.samples()) for u in all_utterances()[:5]]
    n = int(RATE * _SECONDS)
    x = np.zeros(n, np.float32)
    for k, v in enumerate(voices):
        v = np.tile(v, int(np.ceil(n / v.size)) + 1)
        offset = (k * 7919) % v.size
        x += v[offset : offset + n]
    speech_rms = float(np.mean([np.sqrt(np.mean(v[np.abs(v) > 0.01] ** 2)) for v in voices]))
    return (x * (speech_rms * 10 ** (-db_below_speech / 20)) / np.sqrt(np.mean(x**2))).astype(np.float32)
