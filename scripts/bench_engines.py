"""Benchmark each embedded engine alone: load time, RSS, latency (median and p95 over N runs).

    .venv/bin/python scripts/bench_engines.py [--runs 5] [--llm-threads 2] [--skip-llm]

Prints a markdown table (paste it into docs/engines.md with the machine it ran on).
Run it on an otherwise idle machine: the engines share the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicebot.config import DEFAULT_INSTRUCTIONS
from voicebot.engines.base import ChatMessage

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
ROWS: list[tuple[str, str, str, str]] = []


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stats(values: list[float], unit: str = "s", scale: float = 1.0) -> tuple[str, str]:
    v = [x * scale for x in values]
    p95 = float(np.percentile(v, 95))
    fmt = "{:.3f}" if unit in ("s", "x") else "{:.1f}"
    return fmt.format(statistics.median(v)) + f" {unit}", fmt.format(p95) + f" {unit}"


def row(what: str, values: list[float], unit: str = "s", scale: float = 1.0) -> None:
    med, p95 = stats(values, unit, scale)
    ROWS.append((what, med, p95, str(len(values))))
    print(f"  {what}: median {med}, p95 {p95}", file=sys.stderr)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def speech(seconds: float) -> np.ndarray:
    audio = []
    for path in sorted(LIBRIVOX.glob("*.wav")):
        with wave.open(str(path)) as w:
            audio.append(np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768)
    joined = np.concatenate(audio)
    return joined[: int(seconds * 16_000)]


def bench_vad(runs: int) -> None:
    from voicebot.engines.vad import make_vad_factory

    factory = make_vad_factory()
    hops = speech(8.0).reshape(-1, 512)
    costs: list[float] = []
    for _ in range(runs):
        vad = factory()
        for hop in hops:
            start = time.perf_counter()
            vad.score(hop)
            costs.append(time.perf_counter() - start)
    row("VAD hybrid, per 32 ms hop", costs, "µs", 1e6)


def bench_asr(runs: int, model: str) -> object:
    from voicebot.engines.asr_whisper import WhisperRecognizer
    from voicebot.models import whisper_model_dir

    before = rss_mb()
    load = timed(lambda: globals().__setitem__("_asr", WhisperRecognizer(
        whisper_model_dir(model), name=model, workers=2)))
    asr = globals()["_asr"]
    ROWS.append((f"ASR whisper {model} load (+RSS)", f"{load:.2f} s", f"+{rss_mb() - before:.0f} MB", "1"))
    asr.transcribe(speech(1.0), "en")
    for seconds in (1.0, 3.0, 8.0):
        clip = speech(seconds)
        row(f"ASR {model} {seconds:.0f} s clip", [timed(lambda c=clip: asr.transcribe(c, "en")) for _ in range(runs)])
    return asr


def bench_tts(runs: int) -> None:
    from voicebot.engines.tts_piper import PiperSynthesizer
    from voicebot.models import piper_voice_path

    before = rss_mb()
    start = time.perf_counter()
    tts = PiperSynthesizer(piper_voice_path())
    ROWS.append(("TTS piper load (+RSS)", f"{time.perf_counter() - start:.2f} s", f"+{rss_mb() - before:.0f} MB", "1"))
    first = "Sure, I can help with that."
    reply = first + " The weather tomorrow looks sunny and warm. Have a lovely day!"
    tts.synthesize(first)
    row("TTS first clause (6 words)", [timed(lambda: tts.synthesize(first)) for _ in range(runs)])
    rtfs = []
    for _ in range(runs):
        start = time.perf_counter()
        pcm = tts.synthesize(reply)
        rtfs.append((time.perf_counter() - start) / (len(pcm) / tts.sample_rate))
    row("TTS real-time factor (3 sentences)", rtfs, "x")


async def _ttft_and_rate(llm: object, messages: list[ChatMessage], max_tokens: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    stamps: list[float] = []
    async for _ in llm.stream(messages, max_tokens=max_tokens, temperature=0.0):  # type: ignore[attr-defined]
        stamps.append(time.perf_counter())
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 2 else 0.0
    return stamps[0] - start, rate, len(stamps)


def bench_llm(runs: int, threads: int) -> None:
    from voicebot.engines.llm_llamacpp import LlamaCppModel
    from voicebot.models import llm_model_path

    path = llm_model_path()
    before = rss_mb()
    start = time.perf_counter()
    llm = LlamaCppModel(path, threads=threads, context=4096, parallel=2)
    ROWS.append((f"LLM load, {threads} threads (+RSS)", f"{time.perf_counter() - start:.2f} s",
                 f"+{rss_mb() - before:.0f} MB", "1"))
    system = ChatMessage("system", DEFAULT_INSTRUCTIONS)
    questions = ["What is the capital of France?", "How do I boil an egg?", "Tell me a fun fact about owls.",
                 "What should I cook tonight?", "Why is the sky blue?", "Name a good book to read.",
                 "How far away is the moon?", "What is a haiku?"]
    cold, cached, rates = [], [], []
    for i in range(runs):
        # cold: a system prompt never seen before (a new session with custom instructions)
        fresh = ChatMessage("system", f"Session {i}-{time.time()}. " + DEFAULT_INSTRUCTIONS)
        ttft, _, _ = asyncio.run(_ttft_and_rate(llm, [fresh, ChatMessage("user", questions[i % 8])], 1))
        cold.append(ttft)
        # cached: the default system prompt is in the KV cache; only the user turn is new
        ttft, rate, _ = asyncio.run(_ttft_and_rate(llm, [system, ChatMessage("user", questions[i % 8])], 48))
        cached.append(ttft)
        rates.append(rate)
    row(f"LLM TTFT cold prompt (~70 tok), {threads} thr", cold)
    row(f"LLM TTFT cached system prompt, {threads} thr", cached)
    row(f"LLM decode, {threads} thr", rates, "tok/s")
    llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--llm-threads", type=int, nargs="+", default=[2])
    parser.add_argument("--asr-model", default="tiny.en")
    parser.add_argument("--skip-llm", action="store_true")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}", file=sys.stderr)
    bench_vad(args.runs)
    bench_asr(args.runs, args.asr_model)
    bench_tts(args.runs)
    if not args.skip_llm:
        for threads in args.llm_threads:
            bench_llm(args.runs, threads)
    print("| what | median | p95 | runs |\n|---|---|---|---|")
    for what, med, p95, n in ROWS:
        print(f"| {what} | {med} | {p95} | {n} |")


if __name__ == "__main__":
    main()
