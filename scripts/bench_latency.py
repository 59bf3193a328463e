#!/usr/bin/env python
"""Voice-to-voice and barge-in latency of a voicebot server, measured through the official SDK.

Starts a server with the embedded models on a free loopback port (or uses --url), then for each
turn streams a real utterance (pocketsphinx-testdata) at real-time pace, like a microphone, and
times the server's events. Prints p50/p95 tables (markdown) for docs/benchmarks.md.

    .venv/bin/python scripts/bench_latency.py --turns 10 --barge-ins 6

Definitions (all wall-clock, measured in the client):
  voice-to-voice  = end of the user's speech in the stream -> first assistant audio delta
  endpointing     = end of speech -> input_audio_buffer.speech_stopped
  asr             = speech_stopped -> input transcription completed
  llm first token = response start -> first LLM token (server metrics)
  first tts audio = first clause ready -> its audio synthesized (server metrics)
  barge-in        = speech onset of the interruption in the stream -> speech_started arrives /
                    response.done(cancelled) arrives / last audio delta of the cancelled response
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server, stop_server
from tests.realtime_client import Microphone, Recorder, client, receive_into, silence24k, to_pcm24k
from tests.speech import cards, librivox

KEY = "bench-key"


def speech_bounds_ms(samples: np.ndarray, rate: int = 16_000, floor_db: float = 30) -> tuple[float, float]:
    """First and last 10 ms frame whose energy is within ``floor_db`` of the loudest: where speech is.

    30 dB counts breaths and soft onsets as speech (a strict, pessimistic clock for barge-in);
    20 dB is closer to where a listener hears the first syllable. Both are reported.
    """
    frame = rate // 100
    n = samples.size // frame
    energy = (samples[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1)
    db = 10 * np.log10(energy + 1e-9)
    voiced = np.flatnonzero(db > db.max() - floor_db)
    return float(voiced[0] * 10), float((voiced[-1] + 1) * 10)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"| {name} | – | – | – | 0 |"
    return (f"| {name} | {statistics.median(values):.0f} | {pct(values, 0.95):.0f} | {max(values):.0f} "
            f"| {len(values)} |")


async def one_turn(conn: Any, rec: Recorder, mic: Microphone, samples: np.ndarray,
                   results: dict[str, list[float]]) -> None:
    n_done = len(rec.of("response.done"))
    n_stop = len(rec.of("input_audio_buffer.speech_stopped"))
    n_asr = len(rec.of("conversation.item.input_audio_transcription.completed"))
    _, end_ms = speech_bounds_ms(samples)
    sent_at = await mic.say(to_pcm24k(samples))
    speech_end = sent_at + end_ms / 1000
    await rec.wait(lambda: len(rec.of("response.done")) > n_done, timeout=120)
    done = rec.of("response.done")[n_done]
    rid = done["response"]["id"]
    deltas = [t for t, e in rec.timed("response.output_audio.delta") if e["response_id"] == rid]
    stops = rec.timed("input_audio_buffer.speech_stopped")
    asr = rec.timed("conversation.item.input_audio_transcription.completed")
    if not deltas or len(stops) <= n_stop:
        print(f"  turn skipped: status={done['response']['status']}", file=sys.stderr)
        return
    results["voice_to_voice"].append((deltas[0] - speech_end) * 1000)
    heard = asr[n_asr][1]["transcript"] if len(asr) > n_asr else "?"
    print(f"  voice-to-voice {(deltas[0] - speech_end) * 1000:.0f} ms; heard {heard!r}", flush=True)
    results["endpointing"].append((stops[n_stop][0] - speech_end) * 1000)
    if len(asr) > n_asr:
        results["asr"].append((asr[n_asr][0] - stops[n_stop][0]) * 1000)
    m = done["response"].get("metrics") or {}
    if m.get("llm_first_token_ms") is not None:
        results["llm_first_token"].append(m["llm_first_token_ms"])
    if m.get("tts_first_audio_ms") is not None and m.get("first_clause_ms") is not None:
        results["first_tts_audio"].append(m["tts_first_audio_ms"] - m["first_clause_ms"])
    # Let the reply play out before the next turn, as a polite user would.
    await asyncio.sleep(max(0.0, (deltas[-1] - time.monotonic())) + 0.5)


async def one_barge_in(conn: Any, rec: Recorder, mic: Microphone, question: np.ndarray,
                       interruption: np.ndarray, results: dict[str, list[float]]) -> None:
    n_created = len(rec.of("response.created"))
    await mic.say(to_pcm24k(question))
    await rec.wait(lambda: len(rec.of("response.created")) > n_created, timeout=120)
    rid = rec.of("response.created")[n_created]["response"]["id"]
    await rec.wait(lambda: any(e["response_id"] == rid for e in rec.of("response.output_audio.delta")), 120)
    await asyncio.sleep(1.0)
    if any(e["response"]["id"] == rid for e in rec.of("response.done")):
        print("  barge-in skipped: reply finished too early", file=sys.stderr)
        return
    onset_ms, _ = speech_bounds_ms(interruption)
    n_started = len(rec.of("input_audio_buffer.speech_started"))
    sent_at = await mic.say(to_pcm24k(interruption))
    onset = sent_at + onset_ms / 1000
    await rec.wait(lambda: any(e["response"]["id"] == rid for e in rec.of("response.done")), timeout=30)
    done_t, done = next((t, e) for t, e in rec.timed("response.done") if e["response"]["id"] == rid)
    if done["response"]["status"] != "cancelled":
        print("  barge-in missed: response completed", file=sys.stderr)
        return
    started = rec.timed("input_audio_buffer.speech_started")[n_started:]
    last_delta = max(t for t, e in rec.timed("response.output_audio.delta") if e["response_id"] == rid)
    results["barge_in_detect"].append((started[0][0] - onset) * 1000)
    results["barge_in_cancelled"].append((done_t - onset) * 1000)
    results["barge_in_last_delta"].append((last_delta - onset) * 1000)
    onset20 = sent_at + speech_bounds_ms(interruption, floor_db=20)[0] / 1000
    results.setdefault("barge_in_detect_20db", []).append((started[0][0] - onset20) * 1000)
    results.setdefault("barge_in_last_delta_20db", []).append((last_delta - onset20) * 1000)
    # Wait for the answer to the interruption, then let it play out.
    n_done = len(rec.of("response.done"))
    await rec.wait(lambda: len(rec.of("response.done")) > n_done, timeout=120)
    await asyncio.sleep(0.5)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def drive(base: str, key: str, utterances: list[np.ndarray], turns: int, barge_ins: int,
                instructions: str, results: dict[str, list[float]], rec: Recorder, label: str = "") -> None:
    """One Realtime session through the SDK: ``turns`` polite turns, then ``barge_ins`` interruptions."""
    async with client(base, key).realtime.connect(model="voicebot") as conn:
        receiver = asyncio.create_task(receive_into(conn, rec))
        await conn.session.update(session={"type": "realtime", "instructions": instructions,
                                           "audio": {"input": {"transcription": {"model": "whisper"}}}})
        mic = Microphone(conn)
        sender = asyncio.create_task(mic.run())
        mic.say(silence24k(500))
        try:
            for i in range(turns):
                print(f"{label}turn {i + 1}/{turns}", flush=True)
                await one_turn(conn, rec, mic, utterances[i % len(utterances)], results)
            for i in range(barge_ins):
                print(f"{label}barge-in {i + 1}/{barge_ins}", flush=True)
                await one_barge_in(conn, rec, mic, utterances[i % len(utterances)],
                                   utterances[(i + 3) % len(utterances)], results)
        finally:
            sender.cancel()
            receiver.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="An already running server (http://host:port); default: start one")
    parser.add_argument("--api-key", default=KEY)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--barge-ins", type=int, default=6)
    parser.add_argument("--server-arg", action="append", default=[], help="Extra `voicebot serve` flag")
    parser.add_argument("--dump", type=Path, help="Write every event with its arrival time (JSON lines)")
    args = parser.parse_args()

    server = None
    if args.url:
        base, key = args.url.rstrip("/"), args.api_key
    else:
        server = start_server("--api-key", KEY, *args.server_arg)
        base, key = server.http, KEY
        await asyncio.sleep(2)
        print(f"idle server RSS: {rss_mb(server.process.pid):.0f} MB", flush=True)
    utterances = [u.samples() for u in librivox() + cards()]
    results: dict[str, list[float]] = {k: [] for k in (
        "voice_to_voice", "endpointing", "asr", "llm_first_token", "first_tts_audio",
        "barge_in_detect", "barge_in_cancelled", "barge_in_last_delta", "barge_in_detect_20db",
        "barge_in_last_delta_20db")}
    long_answers = ("You are a helpful voice assistant. Answer in three or four full sentences, "
                    "with no lists and no markdown.")
    rec = Recorder()
    try:
        await drive(base, key, utterances, args.turns, args.barge_ins, long_answers, results, rec)
    finally:
        if args.dump:
            with args.dump.open("w") as out:
                for t, e in rec.events:
                    if e["type"] == "response.output_audio.delta":
                        e = {k: v for k, v in e.items() if k != "delta"}
                    out.write(json.dumps({"t": round(t, 4), **e}) + "\n")
        if server is not None:
            print(f"server RSS after the run: {rss_mb(server.process.pid):.0f} MB", flush=True)
            stop_server(server)
    print("\n| metric (ms) | p50 | p95 | max | n |\n|---|---|---|---|---|")
    for name, values in results.items():
        print(row(name.replace("_", " "), values))


if __name__ == "__main__":
    asyncio.run(main())
