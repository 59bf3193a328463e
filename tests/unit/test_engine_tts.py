"""Piper: the audio must be speech the ASR understands, with headroom, at the voice's rate."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import jiwer
import numpy as np
import pytest
import soxr

from tests.unit.test_engine_asr import normalize
from voicebot.engines.asr_whisper import WhisperRecognizer
from voicebot.engines.tts_piper import HEADROOM, PiperSynthesizer
from voicebot.models import piper_voice_path, whisper_model_dir

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


@pytest.fixture(scope="module")
def tts() -> PiperSynthesizer:
    return PiperSynthesizer(piper_voice_path())


@pytest.fixture(scope="module")
def asr() -> WhisperRecognizer:
    return WhisperRecognizer(whisper_model_dir("tiny.en"), name="tiny.en", workers=2)


def to_16k(pcm: np.ndarray, rate: int) -> np.ndarray:
    return soxr.resample(pcm.astype(np.float32) / 32768.0, rate, 16_000).astype(np.float32)


def test_voice_rate_and_headroom(tts: PiperSynthesizer) -> None:
    assert tts.sample_rate == 22_050
    pcm = tts.synthesize(SENTENCE)
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    seconds = len(pcm) / tts.sample_rate
    assert 2.0 < seconds < 6.0
    peak = int(np.abs(pcm.astype(np.int32)).max())
    assert 0.8 * 32767 < peak <= HEADROOM * 32767 + 1


def test_round_trip_through_asr(tts: PiperSynthesizer, asr: WhisperRecognizer) -> None:
    text = asr.transcribe(to_16k(tts.synthesize(SENTENCE), tts.sample_rate), "en")
    assert jiwer.wer(normalize(SENTENCE), normalize(text)) < 0.25, text


def test_several_sentences_in_one_call(tts: PiperSynthesizer, asr: WhisperRecognizer) -> None:
    text = "Hello there. It is twelve degrees outside today."
    heard = asr.transcribe(to_16k(tts.synthesize(text), tts.sample_rate), "en")
    assert jiwer.wer(normalize(text), normalize(heard)) < 0.3, heard


def test_empty_and_blank_text(tts: PiperSynthesizer) -> None:
    assert tts.synthesize("").size == 0
    assert tts.synthesize("   ").size == 0


def test_speed_shortens_audio(tts: PiperSynthesizer) -> None:
    fast = PiperSynthesizer(piper_voice_path(), speed=1.5)
    normal_len = len(tts.synthesize(SENTENCE))
    assert len(fast.synthesize(SENTENCE)) < 0.8 * normal_len
    with pytest.raises(ValueError):
        PiperSynthesizer(piper_voice_path(), speed=0)


def test_concurrent_calls(tts: PiperSynthesizer, asr: WhisperRecognizer) -> None:
    texts = ["Good morning to you.", "The train leaves at nine.", "Please close the door."]
    with ThreadPoolExecutor(3) as pool:
        outputs = list(pool.map(tts.synthesize, texts))
    for text, pcm in zip(texts, outputs, strict=True):
        heard = asr.transcribe(to_16k(pcm, tts.sample_rate), "en")
        assert jiwer.wer(normalize(text), normalize(heard)) < 0.5, (text, heard)
