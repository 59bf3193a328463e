#!/usr/bin/env python
"""Turn-taking of a voicebot server on real speech, measured through the official SDK.

Starts ``voicebot serve`` with the embedded models on a free loopback port (or uses --url) and
talks to it like people do (scripts/caller.py: a real-time microphone, a speaker with a playout
buffer that stops on ``speech_started`` and truncates, optionally a leaky echo path):

* **turns** — every pocketsphinx-testdata recording with a transcript (real human speech),
  cycled; each answered reply is listened to in full, then a pause. Voice-to-voice, the stages
  behind it, and the WER of what the server heard.
* **pauses** — utterances with a 0.6 s pause in the middle of the sentence (real recordings cut
  at a word gap, and "I'd like to book a table for… four people"): the turn must not end in it.
* **barge-ins** — the caller talks over a long reply: onset -> ``speech_started``, -> the last
  audio delta of the cancelled reply.
* **false barge-ins** — during long replies: low-frequency hum, clicks, keyboard, babble, and the
  reply's own voice fed back 50-150 ms late at -20 dB and at -10 dB. None may cancel the reply;
  a real interruption at the end of each must still be caught.

    .venv/bin/python scripts/bench_latency.py [--turns 33] [--pauses 6] [--barge-ins 8] \\
        [--false-barge-ins 2] [--plot docs/latency-stages.png] [--json results.json]

Onset of speech = first 10 ms frame within 20 dB of the utterance's loudest (the issue's clock;
30 dB, which counts breaths, is reported too). All times are wall clock in the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.caller import Caller
from scripts.speech_cases import babble, clicks, hum, keyboard, long_question, paused_utterances
from tests.conftest import start_server, stop_server
from tests.realtime_client import Recorder, client
from tests.speech import all_utterances, wer

KEY = "bench-key"
LONG_ANSWERS = ("You are a helpful voice assistant. Answer in three or four full sentences, "
                "with no lists and no markdown.")


def speech_bounds_ms(samples: np.ndarray, rate: int = 16_000, floor_db: float = 20) -> tuple[float, float]:
    """First and last 10 ms frame whose energy is within ``floor_db`` of the loudest frame."""
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
    return f"| {name} | {statistics.median(values):.0f} | {pct(values, 0.95):.0f} | {max(values):.0f} | {len(values)} |"


class Session:
    """One Realtime session: the SDK connection, a caller, and every event recorded."""

    def __init__(self, conn: Any, caller: Caller) -> None:
        self.conn = conn
        self.caller = caller
        self.rec = caller.rec

    def count(self, kind: str) -> int:
        return len(self.rec.of(kind))

    async def wait(self, predicate: Callable[[], Any], timeout: float = 120) -> Any:
        return await self.rec.wait(predicate, timeout)

    async def next_done(self, n_done: int) -> dict[str, Any]:
        await self.wait(lambda: self.count("response.done") > n_done)
        return self.rec.of("response.done")[n_done]

    def deltas(self, response_id: str) -> list[float]:
        return [t for t, e in self.rec.timed("response.output_audio.delta") if e["response_id"] == response_id]

    async def listen_out(self, response_id: str) -> None:
        """Wait until the caller has played this reply to the end (or it was cut), then a pause."""
        deltas = self.deltas(response_id)
        audio_ms = 0.0
        for _, e in self.rec.timed("response.output_audio.delta"):
            if e["response_id"] == response_id:
                audio_ms += len(e["delta"]) * 3 / 4 / 2 / 24  # base64 -> bytes -> samples -> ms
        if deltas:
            start = self.caller.playback.started.get(response_id, deltas[0])
            await asyncio.sleep(max(0.0, start + audio_ms / 1000 - time.monotonic()))
        await asyncio.sleep(1.0)


async def turn(s: Session, samples: np.ndarray, text: str, results: dict[str, Any]) -> None:
    n_done, n_stop = s.count("response.done"), s.count("input_audio_buffer.speech_stopped")
    n_asr = s.count("conversation.item.input_audio_transcription.completed")
    _, end_ms = speech_bounds_ms(samples)
    sent_at = await s.caller.say(samples)
    speech_end = sent_at + end_ms / 1000
    done = await s.next_done(n_done)
    rid = done["response"]["id"]
    deltas = s.deltas(rid)
    stops = s.rec.timed("input_audio_buffer.speech_stopped")
    asr = s.rec.timed("conversation.item.input_audio_transcription.completed")
    if not deltas or len(stops) <= n_stop:
        print(f"  turn skipped: status={done['response']['status']}", file=sys.stderr)
        return
    v2v = (deltas[0] - speech_end) * 1000
    heard = asr[n_asr][1]["transcript"] if len(asr) > n_asr else ""
    stopped_at = stops[n_stop][0]
    m = done["response"].get("metrics") or {}
    results["voice_to_voice"].append(v2v)
    results["endpointing"].append((stopped_at - speech_end) * 1000)
    results["wer"].append(wer(text, heard))
    if len(asr) > n_asr:
        results["asr"].append((asr[n_asr][0] - speech_end) * 1000)
    # The server's marks, put on the caller's clock: a reply is released when the turn ends (a
    # speculative one) or starts then (one created at the end of the turn).
    origin = stopped_at - (m.get("released_ms") or 0) / 1000 if m.get("speculative") else stopped_at
    marks = {"turn end": stopped_at}
    for key, name in (("history_ready_ms", "transcript"), ("llm_started_ms", "LLM asked"),
                      ("llm_first_token_ms", "LLM first token"),
                      ("first_clause_ms", "first clause"), ("tts_first_audio_ms", "first audio synthesized")):
        if m.get(key) is not None:
            marks[name] = origin + m[key] / 1000
    marks["first audio received"] = deltas[0]
    results["stages"].append({k: round((t - speech_end) * 1000, 1) for k, t in marks.items()})
    results["speculative"].append(bool(m.get("speculative")))
    print(f"  voice-to-voice {v2v:.0f} ms (speculative {bool(m.get('speculative'))}); heard {heard!r}", flush=True)
    await s.listen_out(rid)
    results["underruns"].append(s.caller.playback.underruns.get(rid, 0))


async def pause_case(s: Session, first: np.ndarray, second: np.ndarray, text: str, results: dict[str, Any]) -> None:
    """A sentence with a mid-sentence pause: no speech_stopped may fall into the pause."""
    n_done, n_stop = s.count("response.done"), s.count("input_audio_buffer.speech_stopped")
    pause = np.zeros(16 * 600, np.int16)
    await s.caller.say(np.concatenate((first, pause, second)))
    done = await s.next_done(n_done)
    stops = s.rec.of("input_audio_buffer.speech_stopped")[n_stop:]
    premature = len(stops) > 1 or any(e["response"]["status"] == "cancelled"
                                      for e in s.rec.of("response.done")[n_done:])
    results["premature_endpoints"].append(1.0 if premature else 0.0)
    heard = s.rec.of("conversation.item.input_audio_transcription.completed")[-1]["transcript"]
    print(f"  pause case {'PREMATURE' if premature else 'ok'}: heard {heard!r} ({len(stops)} stops)", flush=True)
    results["pause_wer"].append(wer(text, heard))
    await s.listen_out(done["response"]["id"])
    # Answers to the early half may still be running: wait until everything is quiet.
    await s.wait(lambda: s.count("response.created") == s.count("response.done"))


async def long_reply(s: Session, question: np.ndarray) -> str | None:
    """Ask a question and return the reply's id once its audio is flowing (None if it ended too soon)."""
    n_created = s.count("response.created")
    await s.caller.say(question)
    await s.wait(lambda: s.count("response.created") > n_created)
    rid: str = s.rec.of("response.created")[n_created]["response"]["id"]
    await s.wait(lambda: bool(s.deltas(rid)))
    return rid


def finished(s: Session, rid: str) -> dict[str, Any] | None:
    return next((e for e in s.rec.of("response.done") if e["response"]["id"] == rid), None)


async def barge_in(s: Session, question: np.ndarray, interruption: np.ndarray, results: dict[str, Any],
                   prefix: str = "barge_in", before: float = 1.0) -> None:
    rid = await long_reply(s, question)
    if rid is None:
        return
    await asyncio.sleep(before)
    if (done := finished(s, rid)) is not None:
        text = (done["response"]["output"] or [{}])[0].get("content", [{}])[0].get("transcript")
        print(f"  barge-in skipped: the reply finished too early ({done['response']['status']}, {text!r}, "
              f"{done['response'].get('status_details')})", file=sys.stderr)
        return
    n_started = s.count("input_audio_buffer.speech_started")
    onset20, _ = speech_bounds_ms(interruption, floor_db=20)
    onset30, _ = speech_bounds_ms(interruption, floor_db=30)
    sent_at = await s.caller.say(interruption)
    await s.wait(lambda: finished(s, rid) is not None, timeout=30)
    done = finished(s, rid)
    assert done is not None
    if done["response"]["status"] != "cancelled":
        started = [t for t, _ in s.rec.timed("input_audio_buffer.speech_started")[n_started:]]
        heard = f"speech_started {(started[0] - sent_at) * 1000 - onset20:.0f} ms after the onset" if started else \
            "no speech_started"
        print(f"  barge-in missed: the reply completed ({heard})", file=sys.stderr)
        results[f"{prefix}_missed"].append(1.0)
        return
    results[f"{prefix}_missed"].append(0.0)
    started_t = s.rec.timed("input_audio_buffer.speech_started")[n_started][0]
    last_delta = max(s.deltas(rid))
    results[f"{prefix}_detect"].append((started_t - sent_at) * 1000 - onset20)
    results[f"{prefix}_detect_30db"].append((started_t - sent_at) * 1000 - onset30)
    results[f"{prefix}_last_delta"].append((last_delta - sent_at) * 1000 - onset20)
    n_done = s.count("response.done")
    await s.wait(lambda: s.count("response.done") > n_done)  # the answer to the interruption
    await s.listen_out(s.rec.of("response.done")[-1]["response"]["id"])


async def disturbed_reply(s: Session, question: np.ndarray, noise: np.ndarray | None, interruption: np.ndarray,
                          results: dict[str, Any], name: str) -> None:
    """A disturbance during a long reply must not cancel it; a real interruption after it must."""
    rid = await long_reply(s, question)
    if rid is None:
        return
    if noise is not None:
        s.caller.noise = noise
    await asyncio.sleep(3.0)
    s.caller.noise = None
    done = finished(s, rid)
    # A false barge-in cuts the reply off. (A disturbance that outlasts a short reply may start a
    # turn of its own once the assistant is quiet: that is not a barge-in, and is not counted.)
    false = done is not None and done["response"]["status"] == "cancelled"
    results["false_barge_ins"].append(1.0 if false else 0.0)
    results.setdefault(f"false_barge_in_{name}", []).append(1.0 if false else 0.0)
    print(f"  {name}: {'FALSE BARGE-IN' if false else 'no false barge-in'}", flush=True)
    if false or finished(s, rid) is not None:
        await s.wait(lambda: s.count("response.created") == s.count("response.done"))
        return
    await barge_in_now(s, rid, interruption, results, "disturbed")


async def barge_in_now(s: Session, rid: str, interruption: np.ndarray, results: dict[str, Any], prefix: str) -> None:
    n_started = s.count("input_audio_buffer.speech_started")
    onset20, _ = speech_bounds_ms(interruption, floor_db=20)
    sent_at = await s.caller.say(interruption)
    await s.wait(lambda: finished(s, rid) is not None, timeout=30)
    done = finished(s, rid)
    caught = done is not None and done["response"]["status"] == "cancelled"
    results[f"{prefix}_missed"].append(0.0 if caught else 1.0)
    if caught:
        started_t = s.rec.timed("input_audio_buffer.speech_started")[n_started][0]
        results[f"{prefix}_detect"].append((started_t - sent_at) * 1000 - onset20)
        n_done = s.count("response.done")
        await s.wait(lambda: s.count("response.done") > n_done)
        await s.listen_out(s.rec.of("response.done")[-1]["response"]["id"])


async def open_session(base: str, key: str, instructions: str, **caller_args: Any) -> tuple[Any, Session, Any]:
    manager = client(base, key).realtime.connect(model="voicebot")
    conn = await manager.__aenter__()
    caller = Caller(conn, Recorder(), **caller_args)
    s = Session(conn, caller)
    tasks = [asyncio.create_task(caller.receive()), asyncio.create_task(caller.run())]
    await conn.session.update(session={"type": "realtime", "instructions": instructions,
                                       "audio": {"input": {"transcription": {"model": "whisper"}}}})
    await asyncio.sleep(0.5)
    return manager, s, tasks


async def close_session(manager: Any, tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await manager.__aexit__(None, None, None)


async def run(base: str, key: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    utterances = all_utterances()
    samples = [u.samples() for u in utterances]
    manager, s, tasks = await open_session(base, key, args.instructions)
    try:
        for i in range(args.turns):
            u = utterances[i % len(utterances)]
            print(f"turn {i + 1}/{args.turns}", flush=True)
            await turn(s, samples[i % len(samples)], u.text, results)
        for i, (first, second, text) in enumerate(paused_utterances()[: args.pauses]):
            print(f"pause case {i + 1}: {text!r}", flush=True)
            await pause_case(s, first, second, text, results)
        for i in range(args.barge_ins):
            print(f"barge-in {i + 1}/{args.barge_ins}", flush=True)
            await barge_in(s, long_question(i), samples[(i + 3) % len(samples)], results, before=0.6 + 0.4 * (i % 4))
        for i in range(args.false_barge_ins):
            for name, noise in (("hum", hum()), ("clicks", clicks()), ("keyboard", keyboard()), ("babble", babble())):
                print(f"false barge-in {name} {i + 1}", flush=True)
                await disturbed_reply(s, long_question(i + 1 + len(name)), noise, samples[(i + 5) % len(samples)],
                                      results, name)
    finally:
        await close_session(manager, tasks)
    for db in (-20.0, -10.0):
        for i in range(args.false_barge_ins):
            delay = (50, 100, 150)[i % 3]
            manager, s, tasks = await open_session(base, key, LONG_ANSWERS, echo_db=db, echo_delay_ms=delay)
            try:
                print(f"echo {db:g} dB, {delay} ms late, {i + 1}", flush=True)
                await disturbed_reply(s, long_question(i + 3), None, samples[(i + 6) % len(samples)], results,
                                      f"echo{int(db)}dB")
            finally:
                await close_session(manager, tasks)


def new_results() -> dict[str, Any]:
    return {k: [] for k in (
        "voice_to_voice", "endpointing", "asr", "wer", "stages", "speculative", "premature_endpoints", "pause_wer",
        "barge_in_detect", "barge_in_detect_30db", "barge_in_last_delta", "barge_in_missed", "false_barge_ins",
        "disturbed_detect", "disturbed_missed", "underruns")}


def plot(stages: list[dict[str, float]], path: Path) -> None:
    """Per turn: when each stage was reached after the end of the user's speech."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["turn end", "transcript", "LLM asked", "LLM first token", "first clause", "first audio synthesized",
             "first audio received"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k, name in enumerate(names):
        values = [st[name] for st in stages if name in st]
        ax.scatter(values, [k] * len(values), s=14, alpha=0.6)
        if values:
            med = statistics.median(values)
            ax.plot([med, med], [k - 0.3, k + 0.3], color="black")
            ax.text(med, k + 0.35, f"{med:.0f} ms", ha="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("ms after the end of the user's speech (dots: turns; bars: medians)")
    ax.set_title(f"Where voice-to-voice goes, {len(stages)} turns of real speech")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="An already running server (http://host:port); default: start one")
    parser.add_argument("--api-key", default=KEY)
    parser.add_argument("--turns", type=int, default=33)
    parser.add_argument("--pauses", type=int, default=6)
    parser.add_argument("--barge-ins", type=int, default=8)
    parser.add_argument("--false-barge-ins", type=int, default=2, help="rounds of every noise and echo case")
    parser.add_argument("--instructions", default=LONG_ANSWERS)
    parser.add_argument("--server-arg", action="append", default=[], help="Extra `voicebot serve` flag")
    parser.add_argument("--plot", type=Path, help="Write the per-stage plot (PNG; needs matplotlib)")
    parser.add_argument("--json", type=Path, help="Write every result as JSON")
    args = parser.parse_args()
    server = None
    if args.url:
        base, key = args.url.rstrip("/"), args.api_key
    else:
        server = start_server("--api-key", KEY, *args.server_arg)
        base, key = server.http, KEY
        await asyncio.sleep(2)
    results = new_results()
    started = time.monotonic()
    try:
        await run(base, key, args, results)
    finally:
        if server is not None:
            stop_server(server)
    print(f"\n({time.monotonic() - started:.0f} s)\n\n| metric (ms) | p50 | p95 | max | n |\n|---|---|---|---|---|")
    for name in ("voice_to_voice", "endpointing", "asr", "barge_in_detect", "barge_in_detect_30db",
                 "barge_in_last_delta", "disturbed_detect"):
        print(row(name.replace("_", " "), results[name]))
    stages = results["stages"]
    for name in ("turn end", "transcript", "LLM asked", "LLM first token", "first clause", "first audio synthesized"):
        print(row(f"stage: {name}", [st[name] for st in stages if name in st]))
    counts = {k: (int(sum(v)), len(v)) for k, v in results.items()
              if k.startswith(("false_barge_in", "premature", "barge_in_missed", "disturbed_missed"))}
    print("\n| count | events | cases |\n|---|---|---|")
    for name, (hits, n) in counts.items():
        print(f"| {name.replace('_', ' ')} | {hits} | {n} |")
    if results["wer"]:
        print(f"\nWER of the turns: {statistics.mean(results['wer']):.3f} (mean over {len(results['wer'])}); "
              f"pause cases: {statistics.mean(results['pause_wer'] or [float('nan')]):.3f}; "
              f"speculative replies: {sum(results['speculative'])}/{len(results['speculative'])}; "
              f"playback underruns: {sum(results['underruns'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.plot and stages:
        plot(stages, args.plot)


if __name__ == "__main__":
    asyncio.run(main())
