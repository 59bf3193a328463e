#!/usr/bin/env python
"""Many people talking to one voicebot at once: voice-to-voice and playback underruns per session.

    .venv/bin/python scripts/bench_sessions.py --sessions 3 --turns 6            # the embedded LLM
    .venv/bin/python scripts/bench_sessions.py --sessions 10 --turns 6 --remote  # the LLM elsewhere

Each session is a realistic conversation through the official SDK (scripts/caller.py): a real
recording (pocketsphinx-testdata), then the caller listens to the whole reply through its
playout buffer, pauses 1-3 s, and speaks again; sessions start staggered over the first 3 s.
With ``--remote`` the server's LLM is scripts/llm_standin.py (an OpenAI-compatible server with a
fixed 150 ms time to first token and 40 tokens/s, started here), so what is measured is
voicebot's own work — VAD, ASR, TTS, pacing, the transport — for N people at once.

An underrun is a reply's audio running dry at the caller before the reply's audio was complete:
an audible gap. Reports p50/p95 of voice-to-voice over every turn of every session, underruns,
WER, and the server's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_latency import close_session, new_results, open_session, pct, row, turn
from tests.conftest import free_port, start_server, stop_server
from tests.speech import all_utterances

KEY = "bench-key"
SHORT_ANSWERS = "You are a friendly voice assistant. Answer in one or two short sentences."
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def conversation(base: str, k: int, turns: int, results: dict[str, Any], underruns: list[int]) -> None:
    rng = random.Random(k)
    await asyncio.sleep(rng.uniform(0, 3))
    utterances = all_utterances()
    manager, session, tasks = await open_session(base, KEY, SHORT_ANSWERS)
    try:
        for t in range(turns):
            u = utterances[(k * 3 + t) % len(utterances)]
            print(f"session {k} turn {t + 1}/{turns}", flush=True)
            await turn(session, u.samples(), u.text, results)
            await asyncio.sleep(rng.uniform(0.0, 2.0))  # turn() already waits 1 s after the reply
    finally:
        underruns.append(sum(session.caller.playback.underruns.values()))
        await close_session(manager, tasks)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--remote", action="store_true", help="LLM = scripts/llm_standin.py (150 ms TTFT)")
    parser.add_argument("--ttft-ms", type=float, default=150)
    parser.add_argument("--server-arg", action="append", default=[], help="Extra `voicebot serve` flag")
    args = parser.parse_args()
    standin = None
    server_args = ["--api-key", KEY, *args.server_arg]
    if args.remote:
        port = free_port()
        standin = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "llm_standin.py"), "--port", str(port),
                                    "--ttft-ms", str(args.ttft_ms)], cwd=ROOT)
        server_args += ["--llm-base-url", f"http://127.0.0.1:{port}/v1", "--llm-model", "standin"]
    server = start_server(*server_args)
    results = new_results()
    underruns: list[int] = []
    try:
        await asyncio.sleep(2)
        cpu0, t0, own0 = cpu_seconds(server.process.pid), time.monotonic(), time.process_time()
        await asyncio.gather(*(conversation(server.http, k, args.turns, results, underruns)
                               for k in range(args.sessions)))
        elapsed = time.monotonic() - t0
        cpu_pct = (cpu_seconds(server.process.pid) - cpu0) / elapsed * 100
        callers_pct = (time.process_time() - own0) / elapsed * 100  # the simulated people share the cores
    finally:
        stop_server(server)
        if standin is not None:
            standin.terminate()
            standin.wait()
    llm = f"remote stand-in ({args.ttft_ms:.0f} ms TTFT)" if args.remote else "embedded"
    v2v = results["voice_to_voice"]
    print(f"\n{args.sessions} sessions x {args.turns} turns, LLM {llm}; server CPU {cpu_pct:.0f} % of one core, "
          f"the callers (this process) {callers_pct:.0f} %\n")
    for line in server.log().splitlines():
        if " queue: " in line:  # the server's ASR/TTS admission queues (voicebot/engines/cpu_queue.py)
            print(line.split("] ")[-1] if "] " in line else line)
    print("| metric (ms) | p50 | p95 | max | n |\n|---|---|---|---|---|")
    print(row("voice to voice", v2v))
    stages = results["stages"]
    for name in ("turn end", "transcript", "LLM first token", "first clause", "first audio synthesized"):
        print(row(f"stage: {name}", [st[name] for st in stages if name in st]))
    print(f"\nplayback underruns: {sum(underruns)} (per session {underruns}); "
          f"turns answered: {len(v2v)} of {args.sessions * args.turns}; "
          f"WER {statistics.mean(results['wer'] or [float('nan')]):.3f}; "
          f"p95 voice-to-voice {pct(v2v, 0.95):.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
