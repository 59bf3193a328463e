"""Cost and latency of the sans-I/O core on this machine: `python scripts/bench_core.py`.

Prints, per resampling path, CPU per 20 ms chunk and the streaming delay (how late output
samples leave compared with input samples), plus G.711, chunker and endpointer throughput.
The numbers back the choices documented in voicebot/core/audio.py.
"""

from __future__ import annotations

import time

import numpy as np

from voicebot.core.audio import PCMU, StreamResampler, decode, encode, float32_to_int16
from voicebot.core.chunker import SpeechChunker
from voicebot.core.endpoint import Endpointer
from voicebot.engines.base import VadScores


def bench_resampler(in_rate: int, out_rate: int, low_latency: bool, quality: str) -> str:
    rng = np.random.default_rng(0)
    n = in_rate // 50  # 20 ms chunks, as transports deliver them
    chunk = float32_to_int16(rng.normal(0, 0.1, n))
    r = StreamResampler(in_rate, out_rate, low_latency=low_latency, quality=quality)
    fed = out = 0
    lags: list[float] = []
    t0 = time.perf_counter()
    for i in range(500):
        out += r.process(chunk).size
        fed += n
        if i >= 25:  # skip the start-up transient
            lags.append((fed * out_rate / in_rate - out) / out_rate * 1000)
    per_chunk_us = (time.perf_counter() - t0) / 500 * 1e6
    mode = "low-latency" if low_latency else "default"
    return (
        f"{in_rate:>6} -> {out_rate:<6} {quality:<3} {mode:<11} {per_chunk_us:7.1f} us/20ms "
        f"({per_chunk_us / 20_000 * 100:.2f} % of a core)  delay mean {np.mean(lags):5.1f} ms, "
        f"max {np.max(lags):5.1f} ms"
    )


def main() -> None:
    print("Resampling (20 ms chunks):")
    for in_rate, out_rate in [(24000, 16000), (8000, 16000), (48000, 16000), (22050, 24000), (22050, 8000)]:
        for low_latency in (False, True):
            for quality in ("HQ", "VHQ"):
                print("  " + bench_resampler(in_rate, out_rate, low_latency, quality))

    samples = float32_to_int16(np.random.default_rng(1).normal(0, 0.2, 8000 * 60))
    t0 = time.perf_counter()
    decode(PCMU, encode(PCMU, samples))
    print(f"G.711 μ-law encode+decode of 60 s: {(time.perf_counter() - t0) * 1000:.1f} ms")

    reply = (
        "Sure, I can help with that. The meeting is at 3.30 pm on Tuesday, and Dr. Smith will join. "
        "Bring about 1,000 copies, e.g. the long version... Anything else? "
    ) * 20
    pieces = [reply[i : i + 4] for i in range(0, len(reply), 4)]
    t0 = time.perf_counter()
    chunker = SpeechChunker()
    for p in pieces:
        chunker.push(p)
    chunker.flush()
    dt = time.perf_counter() - t0
    print(f"Chunker: {dt / len(pieces) * 1e6:.1f} us per 4-char piece")

    rng = np.random.default_rng(2)
    hops = [VadScores(fast=bool(rng.random() < 0.5), prob=float(rng.random())) for _ in range(100_000)]
    ep = Endpointer()
    t0 = time.perf_counter()
    for s in hops:
        ep.process(s)
    dt = time.perf_counter() - t0
    print(f"Endpointer: {dt / len(hops) * 1e6:.2f} us per 32 ms hop")


if __name__ == "__main__":
    main()
