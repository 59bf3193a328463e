"""Speech recognition alone: WER and latency of the embedded Whisper per window and beam size.

    .venv/bin/python scripts/bench_asr.py [--runs 3] [--windows 0,10,8,6] [--beams 5,1]

Every real recording of pocketsphinx-testdata with a transcript (11 utterances, 1-7 s) is
transcribed ``--runs`` times per setting after one warm-up pass; latency is per utterance, WER
over all of them (normalised: lowercase, no punctuation, digits spelled). Window 0 is
faster-whisper's own path (every input padded to 30 s); other windows are the short-window path
of ``WhisperRecognizer`` with that minimum length. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jiwer
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.speech import all_utterances, normalize
from voicebot.engines.asr_whisper import WhisperRecognizer
from voicebot.models import whisper_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--windows", default="0,10,8,6")
    parser.add_argument("--beams", default="5,1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    utterances = all_utterances()
    audio = [u.samples().astype(np.float32) / 32768 for u in utterances]
    refs = [normalize(u.text) for u in utterances]
    print("| window | beam | WER | median ms | p95 ms | max ms | short-window fallbacks | n |")
    print("|---|---|---|---|---|---|---|---|")
    for beam in (int(b) for b in args.beams.split(",")):
        for window in (float(w) for w in args.windows.split(",")):
            asr = WhisperRecognizer(whisper_model_dir("tiny.en"), name="tiny.en", workers=1,
                                    threads=args.threads, beam_size=beam, min_window_s=window)
            hyps = [asr.transcribe(a, "en") for a in audio]  # warm-up, and the WER
            times = []
            for _ in range(args.runs):
                for a in audio:
                    started = time.perf_counter()
                    asr.transcribe(a, "en")
                    times.append((time.perf_counter() - started) * 1000)
            wer = jiwer.wer(refs, [normalize(h) for h in hyps])
            label = "30 s (faster-whisper)" if window == 0 else f"≥ {window:g} s"
            print(f"| {label} | {beam} | {wer:.3f} | {statistics.median(times):.0f} | "
                  f"{np.percentile(times, 95):.0f} | {max(times):.0f} | {asr.fallbacks} | {len(times)} |",
                  flush=True)


if __name__ == "__main__":
    main()
