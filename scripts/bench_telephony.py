#!/usr/bin/env python
"""The phone path measured next to the WebSocket path: latency, barge-in, recognition accuracy.

1. Accuracy (in-process, no server): every pocketsphinx-testdata utterance transcribed by the
   embedded Whisper (a) as recorded, 16 kHz, and (b) after the phone path: band-limited to μ-law
   8 kHz as a carrier would send it, then decoded and resampled back to 16 kHz by the exact
   ``InputAudio`` code a telephony Session uses. WER of each against the reference text.
2. Latency (a real server with the embedded models, started on a free loopback port): turns
   through scripts/phone_sim.py (Twilio protocol), then the same utterances through the official
   SDK on ``/v1/realtime`` (scripts/bench_latency.py's turn code), on the same server.

    .venv/bin/python scripts/bench_telephony.py --turns 6 --barge-ins 4

Definitions (wall clock, measured in the caller):
  voice-to-voice   = end of the caller's speech in the stream -> first reply audio frame arrives
  barge-in clear   = onset of the interruption in the stream -> `clear` arrives
  last frame       = onset of the interruption -> last reply audio frame before the `clear`
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_latency import barge_in, close_session, new_results, open_session, row, speech_bounds_ms, turn
from scripts.phone_sim import call, to_ulaw
from tests.conftest import start_server, stop_server
from tests.speech import cards, librivox, normalize, wer

KEY = "bench-key"
LONG_ANSWERS = ("You are a helpful voice assistant on a phone line. Answer in three or four full sentences, "
                "with no lists and no markdown.")


def accuracy() -> None:
    import jiwer

    from voicebot.config import from_env
    from voicebot.core.audio import PCMU, InputAudio, int16_to_float32
    from voicebot.engines.asr_whisper import WhisperRecognizer
    from voicebot.models import default_cache_dir, whisper_model_dir

    settings = from_env({})
    asr = WhisperRecognizer(whisper_model_dir(settings.asr_model, default_cache_dir()), name=settings.asr_model)
    refs, wide, phone = [], [], []
    for u in librivox() + cards():
        samples = u.samples()
        path = InputAudio(PCMU)
        ulaw = to_ulaw(samples, 16_000)
        back = np.concatenate([path.feed(ulaw[i : i + 160]) for i in range(0, len(ulaw), 160)] + [path.flush()])
        refs.append(normalize(u.text))
        wide.append(normalize(asr.transcribe(int16_to_float32(samples), "en")))
        phone.append(normalize(asr.transcribe(int16_to_float32(back), "en")))
        print(f"  {u.name}: 16k {wer(u.text, wide[-1]):.2f}  phone {wer(u.text, phone[-1]):.2f}", flush=True)
    print("\n| input | WER (all words) | utterances |\n|---|---|---|")
    print(f"| 16 kHz PCM as recorded | {jiwer.wer(refs, wide):.3f} | {len(refs)} |")
    print(f"| μ-law 8 kHz (phone path) | {jiwer.wer(refs, phone):.3f} | {len(refs)} |")


async def phone_turn(url: str, samples: np.ndarray, results: dict[str, list[float]]) -> None:
    speech = to_ulaw(samples, 16_000)
    _, end_ms = speech_bounds_ms(samples)
    async with call(url, {}) as phone:
        await asyncio.sleep(0.5)
        sent_at = await phone.say(speech)
        speech_end = sent_at + end_ms / 1000
        await phone.wait(lambda: phone.media_times, timeout=120)
        v2v = (phone.media_times[0] - speech_end) * 1000
        results["phone voice-to-voice"].append(v2v)
        print(f"  phone voice-to-voice {v2v:.0f} ms", flush=True)
        await phone.wait_quiet(1.0, timeout=120)


async def phone_barge_in(url: str, question: np.ndarray, interruption: np.ndarray,
                         results: dict[str, list[float]]) -> None:
    async with call(url, {"instructions": LONG_ANSWERS}) as phone:
        await asyncio.sleep(0.5)
        await phone.say(to_ulaw(question, 16_000))
        await phone.wait(lambda: len(phone.heard) >= 8000 * 1.0, timeout=120)
        if not phone.playing:
            print("  barge-in skipped: reply finished too early", file=sys.stderr)
            return
        onset_ms, _ = speech_bounds_ms(interruption)
        sent_at = await phone.say(to_ulaw(interruption, 16_000))
        onset = sent_at + onset_ms / 1000
        try:
            await phone.wait(lambda: phone.of("clear"), timeout=30)
        except TimeoutError:
            print("  barge-in missed: no clear", file=sys.stderr)
            return
        clear_at = phone.of("clear")[0][0]
        before = [t for t in phone.media_times if t <= clear_at]
        results["phone barge-in: onset -> clear"].append((clear_at - onset) * 1000)
        results["phone barge-in: onset -> last frame"].append((before[-1] - onset) * 1000)
        print(f"  clear {(clear_at - onset) * 1000:.0f} ms after onset", flush=True)
        await asyncio.sleep(1.0)


async def websocket_runs(base: str, args: argparse.Namespace, results: dict[str, list[float]]) -> None:
    ws = new_results()
    utterances = librivox() + cards()
    manager, session, tasks = await open_session(base, KEY, LONG_ANSWERS)
    try:
        for i in range(args.turns):
            print(f"websocket turn {i + 1}/{args.turns}", flush=True)
            u = utterances[i % len(utterances)]
            await turn(session, u.samples(), u.text, ws)
        for i in range(args.barge_ins):
            print(f"websocket barge-in {i + 1}/{args.barge_ins}", flush=True)
            await barge_in(session, utterances[i % len(utterances)].samples(),
                           utterances[(i + 3) % len(utterances)].samples(), ws)
    finally:
        await close_session(manager, tasks)
    results["websocket voice-to-voice (first delta)"] = ws["voice_to_voice"]
    results["websocket barge-in: onset -> speech_started"] = ws["barge_in_detect"]
    results["websocket barge-in: onset -> last delta"] = ws["barge_in_last_delta"]


async def latency(args: argparse.Namespace) -> None:
    server = start_server("--api-key", KEY, env={"VOICEBOT_LOG_LEVEL": "warning"})
    utterances = [u.samples() for u in librivox() + cards()]
    results: dict[str, list[float]] = {k: [] for k in (
        "phone voice-to-voice", "phone barge-in: onset -> clear", "phone barge-in: onset -> last frame")}
    url = f"{server.ws}/telephony/twilio/media?token={KEY}"
    load: list[float] = []
    try:
        for i in range(args.turns):
            print(f"phone turn {i + 1}/{args.turns}", flush=True)
            load.append(os.getloadavg()[0])
            await phone_turn(url, utterances[i % len(utterances)], results)
        for i in range(args.barge_ins):
            print(f"phone barge-in {i + 1}/{args.barge_ins}", flush=True)
            await phone_barge_in(url, utterances[i % len(utterances)], utterances[(i + 3) % len(utterances)],
                                 results)
        if not args.phone_only:
            await websocket_runs(server.http, args, results)
            load.append(os.getloadavg()[0])
    finally:
        stop_server(server)
    print(f"\nload average during the run: {min(load):.1f}-{max(load):.1f} (2 cores)")
    print("\n| metric (ms) | p50 | p95 | max | n |\n|---|---|---|---|---|")
    for name, values in results.items():
        print(row(name, values))
    if results["phone voice-to-voice"]:
        print(f"\nphone median voice-to-voice: {statistics.median(results['phone voice-to-voice']):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--barge-ins", type=int, default=4)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--phone-only", action="store_true", help="skip the WebSocket comparison")
    args = parser.parse_args()
    started = time.monotonic()
    if not args.skip_accuracy:
        accuracy()
    if not args.skip_latency:
        asyncio.run(latency(args))
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()

