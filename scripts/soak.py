#!/usr/bin/env python
"""Soak: N people talking to one voicebot for M minutes, hanging up at random; does it stay flat?

    .venv/bin/python scripts/soak.py                              # 4 sessions x 20 min, embedded models
    .venv/bin/python scripts/soak.py --sessions 4 --minutes 20 --remote
    .venv/bin/python scripts/soak.py --sessions 2 --minutes 3     # a quick look

Each simulated person (the official SDK through scripts/caller.py, real recordings from
pocketsphinx-testdata at real-time pace) holds conversations: a spoken turn, the reply listened to,
a pause; now and then they talk over the reply (barge-in). After any turn, with probability
``--hangup``, they leave — half the time with a clean close, half the time by dropping the TCP
connection mid-turn, the way a phone in a tunnel does — and call again a moment later.

Every ``--sample-s`` the server's RSS and thread count are sampled. At the end, with everyone gone,
the server must report no session left (``/healthz``) and ``voicebot_active_sessions`` 0
(``/metrics``). The report is per time window: turns, errors, voice-to-voice p50/p95, RSS, and a
verdict: RSS is *flat* when the last window's median is within ``--rss-slack-mb`` of the first
window after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_latency import barge_in, close_session, new_results, open_session, pct, turn
from tests.conftest import free_port, start_server, stop_server
from tests.speech import all_utterances

KEY = "soak-key"
INSTRUCTIONS = "You are a friendly voice assistant. Answer in two or three short sentences."


@dataclass
class Log:
    started: float = field(default_factory=time.monotonic)
    turns: list[tuple[float, float]] = field(default_factory=list)  # (minute, voice-to-voice ms)
    barge_ins: list[tuple[float, bool]] = field(default_factory=list)  # (minute, caught)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (minute, what)
    hangups: list[tuple[float, str]] = field(default_factory=list)  # (minute, clean | dropped)
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (minute, RSS MB, threads)

    def minute(self) -> float:
        return (time.monotonic() - self.started) / 60


def rss_and_threads(pid: int) -> tuple[float, int]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"])


async def sample(pid: int, log: Log, every: float) -> None:
    while True:
        rss, threads = rss_and_threads(pid)
        log.samples.append((log.minute(), rss, threads))
        await asyncio.sleep(every)


def server_errors(events: list[dict[str, Any]]) -> list[str]:
    return [f"{e['error'].get('code')}: {e['error'].get('message')}" for e in events if e["type"] == "error"]


async def person(base: str, k: int, deadline: float, args: argparse.Namespace, log: Log) -> None:
    rng = random.Random(k)
    utterances = all_utterances()
    await asyncio.sleep(rng.uniform(0, 5))
    while time.monotonic() < deadline:
        manager, s, tasks = await open_session(base, KEY, INSTRUCTIONS)
        seen_errors = 0
        how = "clean"
        try:
            while time.monotonic() < deadline:
                u = utterances[rng.randrange(len(utterances))]
                results = new_results()
                hang_up = rng.random() < args.hangup
                if hang_up and rng.random() < 0.5:  # drop the line in the middle of a turn
                    how = "dropped"
                    action = asyncio.create_task(turn(s, u.samples(), u.text, results))
                    await asyncio.sleep(rng.uniform(0.3, 4.0))
                    action.cancel()
                    await asyncio.gather(action, return_exceptions=True)
                    s.conn._connection.transport.abort()  # no close frame: the TCP connection just ends
                    break
                if rng.random() < args.barge_in:
                    other = utterances[rng.randrange(len(utterances))]
                    await barge_in(s, u.samples(), other.samples(), results, before=rng.uniform(0.4, 1.5))
                    for missed in results["barge_in_missed"]:
                        log.barge_ins.append((log.minute(), not missed))
                else:
                    await turn(s, u.samples(), u.text, results)
                    log.turns.extend((log.minute(), v) for v in results["voice_to_voice"])
                errors = server_errors([e for _, e in s.rec.events])
                log.errors.extend((log.minute(), f"session {k}: {e}") for e in errors[seen_errors:])
                seen_errors = len(errors)
                if hang_up:
                    break
                await asyncio.sleep(rng.uniform(0.5, 2.0))
        except Exception as exc:  # a client-side failure is a soak failure too: record it, carry on
            log.errors.append((log.minute(), f"session {k}: {type(exc).__name__}: {exc}"))
            how = "failed"
        finally:
            log.hangups.append((log.minute(), how))
            await close_session(manager, tasks) if how == "clean" else await abandon(manager, tasks)
        await asyncio.sleep(rng.uniform(0.5, 3.0))


async def abandon(manager: Any, tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):  # the connection is already gone
        await manager.__aexit__(None, None, None)


def report(log: Log, args: argparse.Namespace, leftover: dict[str, Any]) -> bool:
    window = args.window_min
    n_windows = max(1, int(args.minutes / window + 0.999))
    print(f"\n{args.sessions} sessions x {args.minutes:g} min, LLM {'remote stand-in' if args.remote else 'embedded'}, "
          f"hang-up {args.hangup:.0%} of turns, barge-in {args.barge_in:.0%}\n")
    print("| window (min) | turns | barge-ins caught | hang-ups (dropped) | errors | v2v p50 (ms) | v2v p95 (ms) "
          "| RSS MB (median) | threads (max) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rss_by_window: list[float] = []
    for w in range(n_windows):
        lo, hi = w * window, (w + 1) * window if w < n_windows - 1 else float("inf")  # the last takes the tail

        def within(rows: list[Any], lo: float = lo, hi: float = hi) -> list[Any]:
            return [r for r in rows if lo <= r[0] < hi]
        v2v = [v for _, v in within(log.turns)]
        caught = [c for _, c in within(log.barge_ins)]
        hang = within(log.hangups)
        samples = within(log.samples)
        rss = statistics.median(r for _, r, _ in samples) if samples else float("nan")
        rss_by_window.append(rss)
        print(f"| {lo:g}-{min(hi, args.minutes):g} | {len(v2v)} | {sum(caught)}/{len(caught)} | {len(hang)} "
              f"({sum(h == 'dropped' for _, h in hang)}) | {len(within(log.errors))} "
              f"| {statistics.median(v2v) if v2v else float('nan'):.0f} | {pct(v2v, 0.95):.0f} | {rss:.0f} "
              f"| {max((t for _, _, t in samples), default=0)} |")
    all_v2v = [v for _, v in log.turns]
    print(f"\nall: {len(all_v2v)} turns, v2v p50 {statistics.median(all_v2v) if all_v2v else float('nan'):.0f} / "
          f"p95 {pct(all_v2v, 0.95):.0f} ms; {len(log.errors)} errors; {len(log.hangups)} hang-ups")
    for minute, what in log.errors[:20]:
        print(f"  error at {minute:.1f} min: {what}")
    baseline = rss_by_window[1] if len(rss_by_window) > 2 else rss_by_window[0]
    growth = rss_by_window[-1] - baseline
    flat = growth <= args.rss_slack_mb
    print(f"RSS: {baseline:.0f} MB after warm-up -> {rss_by_window[-1]:.0f} MB in the last window "
          f"({growth:+.0f} MB; {'flat' if flat else 'GROWING'}, slack {args.rss_slack_mb:g} MB)")
    print(f"after everyone left: {leftover}")
    clean = leftover["sessions"] == 0 and leftover["active"] == 0
    return flat and clean and not log.errors


async def leftovers(base: str) -> dict[str, Any]:
    """What the server still holds once every caller is gone (a few seconds' grace for the drops)."""
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEY}"}) as http:
        for _ in range(40):
            sessions = (await http.get("/healthz")).json()["sessions"]
            metrics = (await http.get("/metrics")).text
            active = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                         if line.startswith("voicebot_active_sessions{") and 'transport="sse"' not in line)
            if sessions == 0 and active == 0:
                break
            await asyncio.sleep(0.5)
    return {"sessions": sessions, "active": active}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=4, help="People talking at once.")
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--hangup", type=float, default=0.15, help="Chance a person leaves after a turn.")
    parser.add_argument("--barge-in", type=float, default=0.15, help="Chance a turn is talked over.")
    parser.add_argument("--window-min", type=float, default=5, help="Report window (minutes).")
    parser.add_argument("--sample-s", type=float, default=10, help="RSS sampling period (seconds).")
    parser.add_argument("--rss-slack-mb", type=float, default=60, help="Growth allowed after warm-up.")
    parser.add_argument("--remote", action="store_true", help="LLM = scripts/llm_standin.py (150 ms TTFT)")
    parser.add_argument("--server-arg", action="append", default=[], help="Extra `voicebot serve` flag")
    args = parser.parse_args()
    server_args = ["--api-key", KEY, *args.server_arg]
    standin = None
    if args.remote:
        port = free_port()
        standin = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "llm_standin.py"), "--port", str(port)],
                                   cwd=ROOT)
        server_args += ["--llm-base-url", f"http://127.0.0.1:{port}/v1", "--llm-model", "standin"]
    server = start_server(*server_args)
    log = Log()
    sampler = asyncio.create_task(sample(server.process.pid, log, args.sample_s))
    try:
        deadline = time.monotonic() + args.minutes * 60
        await asyncio.gather(*(person(server.http, k, deadline, args, log) for k in range(args.sessions)))
        left = await leftovers(server.http)
    finally:
        sampler.cancel()
        stop_server(server)
        if standin is not None:
            standin.terminate()
            standin.wait()
    return 0 if report(log, args, left) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
