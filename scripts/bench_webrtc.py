#!/usr/bin/env python
"""WebRTC transport benchmark: voice-to-voice next to the WebSocket, and the cost of a call.

Part 1 (real models): one server, alternating turns over the WebSocket (official SDK, as in
scripts/bench_latency.py) and over WebRTC (an aiortc peer, tests/rtc_client.py), the same real
utterances streamed at real-time pace. Voice-to-voice = end of the user's speech ->
  WebSocket: first response.output_audio.delta arrives (what a client can start playing);
  WebRTC:    first audible 20 ms frame arrives out of the peer's jitter buffer (what it plays),
             and output_audio_buffer.started on the data channel.

Part 2 (fake engines, so only the transport costs CPU): a server process with the test fakes
(energy VAD, scripted ASR, word-streaming LLM, tone TTS) and N concurrent calls whose peers
stream a 300 Hz tone burst every few seconds, so every call keeps Opus decode (in), 48->16 kHz
resampling + VAD framing, and Opus encode (out, tone replies and silence alike) busy. We read the
server's CPU time from /proc and check real time at the peers: frames received per second and
the largest gap between frames.

    .venv/bin/python scripts/bench_webrtc.py --turns 6 --calls 1,4,8,16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_latency import close_session, new_results, open_session, pct, row, speech_bounds_ms, turn
from tests.conftest import free_port, start_server, stop_server
from tests.rtc_client import RtcClient, frame_rms, silence48k, to48k
from tests.speech import cards, librivox

KEY = "bench-key"
LOUD = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


async def webrtc_turn(peer: RtcClient, samples: np.ndarray, results: dict[str, list[float]]) -> None:
    rec = peer.recorder
    n_done = len(rec.of("response.done"))
    n_started = len(rec.of("output_audio_buffer.started"))
    _, end_ms = speech_bounds_ms(samples)
    sent_at = await peer.mic.say(to48k(samples))
    speech_end = sent_at + end_ms / 1000
    await rec.wait(lambda: len(rec.of("response.done")) > n_done, timeout=120)
    done = rec.of("response.done")[n_done]
    if done["response"]["status"] != "completed" or len(rec.of("output_audio_buffer.started")) <= n_started:
        print(f"  webrtc turn skipped: status={done['response']['status']}", file=sys.stderr)
        return
    started_t = rec.timed("output_audio_buffer.started")[n_started][0]
    audible = next((t for t, f in peer.frames if t >= speech_end and frame_rms(f) > LOUD), None)
    if audible is None:
        return
    results["webrtc_voice_to_voice"].append((audible - speech_end) * 1000)
    results["webrtc_buffer_started_event"].append((started_t - speech_end) * 1000)
    print(f"  webrtc voice-to-voice {(audible - speech_end) * 1000:.0f} ms", flush=True)
    await rec.wait(lambda: any(e["response_id"] == done["response"]["id"]
                               for e in rec.of("output_audio_buffer.stopped")), timeout=60)
    await asyncio.sleep(0.5)


async def latency(turns: int, results: dict[str, list[float]]) -> None:
    server = start_server("--api-key", KEY)
    utterances = librivox() + cards()
    instructions = "You are a helpful voice assistant. Answer in one or two short sentences."
    try:
        manager, session, tasks = await open_session(server.http, KEY, instructions)
        peer = RtcClient()
        try:
            await peer.connect(server.http, KEY)
            peer.send({"type": "session.update", "session": {"type": "realtime", "instructions": instructions}})
            peer.mic.say(silence48k(500))
            ws = new_results()
            for i in range(turns):
                u = utterances[i % len(utterances)]
                print(f"turn {i + 1}/{turns} (websocket, then webrtc)", flush=True)
                await turn(session, u.samples(), u.text, ws)
                await webrtc_turn(peer, u.samples(), results)
            results["websocket_voice_to_voice"] = ws["voice_to_voice"]
        finally:
            await peer.close()
            await close_session(manager, tasks)
    finally:
        stop_server(server)


SERVER = """
import sys, uvicorn
from tests.session.fakes import SlowLlm, ToneTts, fake_engines
from voicebot.config import from_env
from voicebot.server import create_app
port = int(sys.argv[1])
settings = from_env({}, host="127.0.0.1", port=port, webrtc_max_calls=500, webrtc_media_timeout_s=60)
engines = fake_engines(llm=SlowLlm(reply="Sure, here is a short answer for you.", delay=0.01), tts=ToneTts(20))
uvicorn.run(create_app(settings, engines=engines), host="127.0.0.1", port=port, log_level="warning")
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def load(n_calls: int, seconds: float, port: int, pid: int) -> dict[str, float]:
    peers = [RtcClient() for _ in range(n_calls)]
    base = f"http://127.0.0.1:{port}"
    await asyncio.gather(*(p.connect(base, None, timeout=60) for p in peers))
    t = np.arange(int(48_000 * 0.6)) / 48_000
    burst = (np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16)
    await asyncio.sleep(2)  # settle
    start, cpu0 = time.monotonic(), cpu_seconds(pid)
    for p in peers:
        p.frames.clear()
    while time.monotonic() - start < seconds:
        for p in peers:
            p.mic.say(np.concatenate([burst, silence48k(2400)]))
        await asyncio.sleep(3)
    elapsed, cpu = time.monotonic() - start, cpu_seconds(pid) - cpu0
    fps = [len(p.frames) / elapsed for p in peers]
    gaps = [max(np.diff([t for t, _ in p.frames])) * 1000 for p in peers if len(p.frames) > 2]
    replies = sum(len(p.recorder.of("response.done")) for p in peers)
    await asyncio.gather(*(p.close() for p in peers))
    await asyncio.sleep(1)
    return {"calls": n_calls, "cpu_pct": cpu / elapsed * 100, "cpu_per_call": cpu / elapsed * 100 / n_calls,
            "fps_min": min(fps), "fps_median": statistics.median(fps), "gap_p95": pct(gaps, 0.95),
            "gap_max": max(gaps), "replies": replies}


def spawn_fake_server(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


async def capacity(calls: list[int], seconds: float) -> list[dict[str, float]]:
    port = free_port()
    proc = spawn_fake_server(port)
    try:
        import httpx

        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        idle0, t0 = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(3)
        print(f"idle server CPU: {(cpu_seconds(proc.pid) - idle0) / (time.monotonic() - t0) * 100:.1f} %")
        out = []
        for n in calls:
            print(f"{n} concurrent calls for {seconds:.0f} s", flush=True)
            result = await load(n, seconds, port, proc.pid)
            print(f"  {result}", flush=True)
            out.append(result)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=6, help="real-model turns per transport (0 = skip)")
    parser.add_argument("--calls", default="1,4,8,16", help="concurrent call counts for the CPU part ('' = skip)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per call count")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"websocket_voice_to_voice": [], "webrtc_voice_to_voice": [],
                                       "webrtc_buffer_started_event": []}
    if args.turns:
        await latency(args.turns, results)
        print("\n| voice-to-voice (ms) | p50 | p95 | max | n |\n|---|---|---|---|---|")
        for name, values in results.items():
            print(row(name.replace("_", " "), values))
    if args.calls:
        rows = await capacity([int(n) for n in args.calls.split(",")], args.seconds)
        print("\n| calls | server CPU % (of one core) | CPU % per call | frames/s per call (min / median) "
              "| frame gap p95 / max (ms) | replies |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['calls']:.0f} | {r['cpu_pct']:.0f} | {r['cpu_per_call']:.1f} | "
                  f"{r['fps_min']:.1f} / {r['fps_median']:.1f} | {r['gap_p95']:.0f} / {r['gap_max']:.0f} | "
                  f"{r['replies']:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
