"""Real human speech for tests: Debian's pocketsphinx-testdata (BSD-2), and WER scoring."""

from __future__ import annotations

import re
import wave
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

DATA = Path("/usr/share/pocketsphinx/test/data")
_NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
            "7": "seven", "8": "eight", "9": "nine", "10": "ten"}


@dataclass(frozen=True)
class Utterance:
    name: str
    path: Path
    text: str

    def samples(self) -> np.ndarray:
        """int16 mono samples at 16 kHz."""
        if self.path.suffix == ".raw":  # headerless 16 kHz int16 (the pocketsphinx decoder tests)
            return np.frombuffer(self.path.read_bytes(), dtype="<i2").copy()
        with wave.open(str(self.path), "rb") as w:
            assert w.getframerate() == 16_000 and w.getnchannels() == 1 and w.getsampwidth() == 2
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def _parse(path: Path, folder: Path) -> list[Utterance]:
    out = []
    for line in path.read_text().splitlines():
        m = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
        if m:
            out.append(Utterance(m.group(2), folder / f"{m.group(2)}.wav", " ".join(m.group(1).split())))
    return out


def librivox() -> list[Utterance]:
    return _parse(DATA / "librivox" / "transcription", DATA / "librivox")


def cards() -> list[Utterance]:
    return _parse(DATA / "cards" / "cards.transcription", DATA / "cards")


def goforward() -> Utterance:
    """pocketsphinx's own decoder test recording."""
    return Utterance("goforward", DATA / "goforward.raw", "go forward ten meters")


def all_utterances() -> list[Utterance]:
    """Every recording with a transcript: 5 read sentences, 5 card names, one command (11)."""
    return [*librivox(), *cards(), goforward()]


def utterance(name: str) -> Utterance:
    for u in all_utterances():
        if u.name == name or u.name.endswith(name):
            return u
    raise KeyError(name)


def normalize(text: str) -> str:
    text = text.lower().replace("mr.", "mister").replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]", " ", text)
    words = [_NUMBERS.get(w, w) for w in text.split()]
    return " ".join(words)


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp or "<empty>"))


def missed(reference: str, hypothesis: str) -> float:
    """The share of ``reference`` words not found in ``hypothesis`` (WER without insertions):
    for audio cut mid-word, where Whisper tends to invent a tail that is not a miss."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0
    out = jiwer.process_words(ref, hyp or "<empty>")
    return (out.substitutions + out.deletions) / len(ref.split())


def missed_chars(reference: str, hypothesis: str) -> float:
    """The share of ``reference`` letters not found in ``hypothesis``, spaces and punctuation
    ignored: for a few words of 8 kHz phone audio, where Whisper hears "ill-disposed" as "he'll
    dispose" (two words wrong, the sound right) and a word measure on six words cannot tell that
    from the wrong text."""
    ref, hyp = normalize(reference).replace(" ", ""), normalize(hypothesis).replace(" ", "")
    if not ref:
        return 0.0
    out = jiwer.process_characters(ref, hyp or "<empty>")
    return (out.substitutions + out.deletions) / len(ref)
