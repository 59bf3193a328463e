"""Whisper on real human speech (pocketsphinx test data, BSD-2), scored by WER."""

from __future__ import annotations

import re
import wave
from pathlib import Path

import jiwer
import numpy as np
import pytest

from voicebot.engines.asr_whisper import WhisperRecognizer, looped
from voicebot.models import whisper_model_dir

DATA = Path("/usr/share/pocketsphinx/test/data")
#: Measured on these 10 utterances: tiny.en 0.065 (beam 5) / 0.087 (beam 1); margin for CPU variance.
MAX_WER = 0.15

_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ABBREV = {"mr": "mister", "mrs": "missus", "dr": "doctor"}


def _spell(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    return " ".join(_ONES[int(d)] for d in str(n))


def normalize(text: str) -> str:
    """Lowercase, expand abbreviations, spell digits, drop punctuation: what WER should compare."""
    text = re.sub(r"\d+", lambda m: f" {_spell(int(m.group()))} ", text.lower())
    words = re.sub(r"[^a-z' ]+", " ", text).replace("'", "").split()
    return " ".join(_ABBREV.get(w, w) for w in words)


def corpus() -> list[tuple[Path, str]]:
    items: list[tuple[Path, str]] = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        lines = (DATA / folder / listing).read_text().splitlines()
        for line in lines:
            m = re.match(r"<s>(.*)</s>\s*\((.*)\)", line.strip())
            if m:
                items.append((DATA / folder / f"{m.group(2)}.wav", m.group(1).strip()))
    return items


def load_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16_000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def asr() -> WhisperRecognizer:
    return WhisperRecognizer(whisper_model_dir("tiny.en"), name="tiny.en", workers=2)


@pytest.fixture(scope="module")
def asr_30s() -> WhisperRecognizer:
    """faster-whisper's own path: every input padded to the 30 s window."""
    return WhisperRecognizer(whisper_model_dir("tiny.en"), name="tiny.en", workers=1, min_window_s=0)


def test_normalize() -> None:
    assert normalize("Mr. Dashwood had 5 cold-hearted, 42 sons!") == (
        "mister dashwood had five cold hearted forty two sons"
    )


def test_wer_on_real_speech(asr: WhisperRecognizer) -> None:
    items = corpus()
    assert len(items) >= 10
    refs = [normalize(ref) for _, ref in items]
    hyps = [normalize(asr.transcribe(load_wav(path), "en")) for path, _ in items]
    assert all(hyps), f"empty transcript: {hyps}"
    wer = jiwer.wer(refs, hyps)
    assert wer < MAX_WER, list(zip(refs, hyps, strict=True))


def test_the_short_window_is_as_accurate_as_the_30_s_one(asr: WhisperRecognizer,
                                                         asr_30s: WhisperRecognizer) -> None:
    items = corpus()
    refs = [normalize(ref) for _, ref in items]
    short = jiwer.wer(refs, [normalize(asr.transcribe(load_wav(p), "en")) for p, _ in items])
    full = jiwer.wer(refs, [normalize(asr_30s.transcribe(load_wav(p), "en")) for p, _ in items])
    assert short <= full + 0.02, (short, full)


def test_a_looping_short_window_falls_back_to_the_full_one(asr: WhisperRecognizer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert looped("ten of clubs " * 8, 4.0) and looped("ten of clubs ten of clubs ten", 1.2)
    assert not looped("ten of clubs", 1.2) and not looped("he was not an ill disposed young man", 2.0)
    path, ref = corpus()[5]
    monkeypatch.setattr(asr, "_short_window", lambda audio, language: None)  # as if it had looped
    before = asr.fallbacks
    assert normalize(asr.transcribe(load_wav(path), "en")) == normalize(ref)
    assert asr.fallbacks == before + 1


def test_silence_and_short_input_give_empty_text(asr: WhisperRecognizer) -> None:
    assert asr.transcribe(np.zeros(16_000, np.float32)) == ""
    assert asr.transcribe(np.full(800, 0.001, np.float32)) == ""
    quiet = np.random.default_rng(0).standard_normal(32_000).astype(np.float32) * 0.001
    assert asr.transcribe(quiet) == ""


def test_noise_gives_no_words(asr: WhisperRecognizer) -> None:
    rng = np.random.default_rng(1)
    brown = np.cumsum(rng.standard_normal(48_000))
    brown = (brown - np.convolve(brown, np.ones(800) / 800, "same")) / 400
    noise = np.clip(brown, -1, 1).astype(np.float32)
    assert len(asr.transcribe(noise).split()) <= 2


def test_concurrent_calls_are_safe(asr: WhisperRecognizer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path, ref = corpus()[1]
    audio = load_wav(path)
    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda _: asr.transcribe(audio, "en"), range(3)))
    for text in texts:
        assert jiwer.wer(normalize(ref), normalize(text)) < 0.5
