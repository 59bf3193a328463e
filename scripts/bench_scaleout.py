#!/usr/bin/env python
"""Scale-out benchmarks (issue 13): SSE through Redis vs in memory, /v1/audio/* real-time factor,
and the added latency of remote (loopback) ASR / TTS / LLM against embedded engines.

    .venv/bin/python scripts/bench_scaleout.py --part all --runs 10
    .venv/bin/python scripts/bench_scaleout.py --part sse --runs 10 --readers 1,10,50 --log-events 2000
    .venv/bin/python scripts/bench_scaleout.py --part audio --audio-passes 2
    .venv/bin/python scripts/bench_scaleout.py --part remote --runs 10

* **sse** — ``voicebot serve`` instances whose LLM is scripts/llm_standin.py (fixed, fast, canned
  reply: ``--standin-ttft-ms``, ``--standin-tokens-per-s``) and whose ASR/TTS point at an unused
  port (never called: no model is loaded, the instance is only the transport). Memory: one
  instance. Redis: redis-server (tests/cluster/support.py) and two instances with ``--store``.
  Readers are raw asyncio sockets in this process (as scripts/bench_sse.py). Per run: a new
  conversation, N readers (with Redis "split": alternating between the two instances), then
  ``POST .../messages`` on the first instance; timed from the POST: the user's own item at every
  reader (a pure delivery latency: no model in between), ``assistant.done`` at the last reader.
  Resume: a conversation filled to ``--log-events`` events, then a reader with
  ``Last-Event-ID: 0`` reads them all back (time to the last one, events/s), on the writing
  instance and on the other one.
* **audio** — one instance with the embedded Whisper and Piper (LLM = the stand-in, not used),
  the official ``openai`` SDK: ``audio.transcriptions.create`` on the 10 longest
  pocketsphinx-testdata recordings (real speech, written to WAV), RTF = wall time / audio
  duration; ``audio.speech.with_streaming_response.create`` (pcm, wav) on 10 sentences of 2-40
  words: time to first byte and RTF (total time / audio duration).
* **remote** — the same instance as a model server (plus its embedded LLM) vs the same engines
  loaded in this process (voicebot.engines.loader): ASR of a 3 s utterance
  (OpenAITranscriber vs WhisperRecognizer), TTS of a first clause (OpenAISynthesizer vs
  PiperSynthesizer), LLM time to first token on a cached prompt (OpenAIChatModel against
  /v1/chat/completions vs LlamaCppModel). Calls alternate remote / embedded; the first pair
  is warm-up. Overhead = median(remote) - median(embedded).

Everything is on 127.0.0.1 on the same 2 cores: servers, Redis, readers and clients compete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_latency import pct
from tests.conftest import ServerProcess, free_port, start_server, stop_server
from voicebot.engines.asr_openai import wav_bytes

KEY = "bench-key"
DEAD_URL = "http://127.0.0.1:9/v1"  # discard port: a remote engine that is never called
SENTENCES = [
    "Hello there.",
    "Sure, I can help with that.",
    "The train leaves at half past nine tomorrow morning.",
    "Your table for four is booked for Friday evening at seven.",
    "I checked the forecast, and it looks like rain in the afternoon, so bring an umbrella.",
    "There are three ways to get there: the bus, which is cheapest, the train, which is fastest, "
    "and a taxi, which is the most comfortable.",
    "Thank you for calling. Your order has shipped and should arrive within two business days.",
    "The museum opens at ten. Tickets are twelve euros for adults and free for children under twelve. "
    "The modern art wing is closed for renovation until March.",
    "Okay.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make "
    "sugar and oxygen, and it happens mostly in the leaves, inside small structures called chloroplasts.",
]
FIRST_CLAUSE = "Sure, I can help with that."


# --- statistics and tables ------------------------------------------------------------------------


def fmt(value: float, digits: int) -> str:
    return "–" if value != value else f"{value:.{digits}f}"


def stat_row(name: str, values: list[float], digits: int = 1, extra: str = "") -> str:
    if not values:
        return f"| {name} | – | – | – | 0 |{extra}"
    return (f"| {name} | {fmt(statistics.median(values), digits)} | {fmt(pct(values, 0.95), digits)} | "
            f"{fmt(max(values), digits)} | {len(values)} |{extra}")


def table(title: str, unit: str, rows: list[str], extra_header: str = "") -> str:
    extra_sep = "---|" * extra_header.count("|")
    head = f"| {unit} | p50 | p95 | max | n |{extra_header}\n|---|---|---|---|---|{extra_sep}"
    return f"\n**{title}**\n\n{head}\n" + "\n".join(rows) + "\n"


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- SSE ------------------------------------------------------------------------------------------


@dataclass
class Stream:
    """One SSE connection on a raw socket; every event's arrival time, id and name."""

    port: int
    path: str
    last_event_id: str | None = None
    events: list[tuple[float, int, str]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    until_id: int = 0  # set done when this id has arrived (resume)
    started: float = 0.0
    task: asyncio.Task[None] | None = None
    writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer = writer
        extra = f"Last-Event-ID: {self.last_event_id}\r\n" if self.last_event_id is not None else ""
        self.started = time.perf_counter()
        writer.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Accept: text/event-stream\r\n{extra}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            status = head.split(b"\r\n", 1)[0].decode()
            print(f"  reader on :{self.port} refused: {status}", flush=True)
        self.ready.set()
        buffer = b""
        while chunk := await reader.read(262144):
            now = time.perf_counter()
            buffer += chunk
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                event_id, name = -1, ""
                for line in frame.split(b"\n"):
                    if line.startswith(b"id: "):
                        event_id = int(line[4:])
                    elif line.startswith(b"event: "):
                        name = line[7:].decode()
                if name:
                    self.events.append((now, event_id, name))
                    if name == "assistant.done" or (self.until_id and event_id >= self.until_id):
                        self.done.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


_clients: dict[int, Any] = {}


async def api(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One kept-alive httpx client per instance (a new client per call would time its own set-up)."""
    import httpx

    if port not in _clients:
        _clients[port] = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                           headers={"Authorization": f"Bearer {KEY}"})
    r = await _clients[port].request(method, path, json=body)
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


async def fanout(ports: list[int], readers: int, runs: int) -> dict[str, list[float]]:
    """POST on ports[0]; readers alternate over ``ports``. Times in ms from the POST."""
    out: dict[str, list[float]] = {"user_item_ms": [], "done_last_ms": [], "done_spread_ms": [],
                                   "other_minus_same_ms": []}
    for run in range(runs + 1):  # run 0 is warm-up
        conv = await api(ports[0], "POST", "/v1/conversations", {})
        path = f"/v1/conversations/{conv['id']}/events"
        streams = [Stream(ports[i % len(ports)], path) for i in range(readers)]
        for s in streams:
            s.start()
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in streams)), 30)
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        await api(ports[0], "POST", f"/v1/conversations/{conv['id']}/messages", {"text": "hello"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in streams)), 15)
        lost = [s for s in streams if not s.done.is_set()]
        if lost:  # a reader that never got assistant.done: reported, not timed
            out.setdefault("incomplete", []).append(float(len(lost)))
            for s in lost[:3]:
                print(f"  INCOMPLETE reader on :{s.port}: {len(s.events)} events, last "
                      f"{s.events[-1][1:] if s.events else None}, connection ended: "
                      f"{s.task is not None and s.task.done()}", flush=True)
            streams = [s for s in streams if s.done.is_set()]
        if run == 0:
            names = [n for _, _, n in streams[0].events]
            print(f"  events of one reply ({len(names)}): {sorted(set(names))}", flush=True)
        else:
            done = [next(t for t, _, n in s.events if n == "assistant.done") for s in streams]
            for s in streams:  # the first event: the user's message item, emitted while POST is handled
                out["user_item_ms"].append((s.events[0][0] - t0) * 1000)
            out["done_last_ms"].append((max(done) - t0) * 1000)
            out["done_spread_ms"].append((max(done) - min(done)) * 1000)
            if len(ports) > 1 and readers > 1:  # same event, reader on B minus reader on A
                a = {i: t for t, i, _ in streams[0].events}
                for t, i, _ in streams[1].events:
                    if i in a:
                        out["other_minus_same_ms"].append((t - a[i]) * 1000)
        for s in streams:
            s.close()
        await asyncio.sleep(0.1)
    return out


async def fill_log(port: int, events: int) -> tuple[str, int]:
    """A conversation with at least ``events`` events: messages posted one reply after another."""
    conv = await api(port, "POST", "/v1/conversations", {})
    path = f"/v1/conversations/{conv['id']}/events"
    watcher = Stream(port, path)
    watcher.start()
    await asyncio.wait_for(watcher.ready.wait(), 30)
    last = 0
    while last < events:
        watcher.done.clear()
        await api(port, "POST", f"/v1/conversations/{conv['id']}/messages", {"text": "hello"})
        await asyncio.wait_for(watcher.done.wait(), 60)
        last = max(i for _, i, _ in watcher.events)
    watcher.close()
    return path, last


async def resume(port: int, path: str, last: int, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"first_ms": [], "all_ms": [], "events_per_s": [], "missing": []}
    for run in range(runs + 1):
        s = Stream(port, path, last_event_id="0", until_id=last)
        s.start()
        await asyncio.wait_for(s.done.wait(), 60)
        ids = [i for _, i, _ in s.events if i > 0]
        if run:
            total = s.events[-1][0] - s.started
            out["first_ms"].append((s.events[0][0] - s.started) * 1000)
            out["all_ms"].append(total * 1000)
            out["events_per_s"].append(len(ids) / total)
            out["missing"].append(float(last - len(set(ids))))
        s.close()
        await asyncio.sleep(0.05)
    return out


def sse_server(standin_url: str, *extra: str) -> ServerProcess:
    return start_server("--api-key", KEY, "--llm-base-url", standin_url, "--llm-model", "standin",
                        "--asr-base-url", DEAD_URL, "--tts-base-url", DEAD_URL,
                        # ~1,000 streams a minute are opened; the default 600/min per client would 429
                        # (shared through Redis, so the split setup hit it first)
                        "--rate-limit-per-minute", "0", *extra, ready_timeout=60)


async def part_sse(args: argparse.Namespace) -> str:
    raise_fd_limit()
    from tests.cluster.support import start_redis

    readers = [int(x) for x in args.readers.split(",")]
    port = free_port()
    standin = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "llm_standin.py"), "--port", str(port),
                                "--ttft-ms", str(args.standin_ttft_ms),
                                "--tokens-per-s", str(args.standin_tokens_per_s)], cwd=ROOT)
    standin_url = f"http://127.0.0.1:{port}/v1"
    servers: list[ServerProcess] = []
    redis = None
    fan_rows: list[str] = []
    resume_rows: list[str] = []
    try:
        servers.append(sse_server(standin_url))
        mem = [servers[0].port]
        redis = start_redis()
        servers.append(sse_server(standin_url, "--store", redis.url))
        servers.append(sse_server(standin_url, "--store", redis.url))
        red = [servers[1].port, servers[2].port]
        setups = [("memory", mem[:1]), ("Redis, one instance", red[:1]), ("Redis, split over 2", red)]
        for n in readers:
            for label, ports in setups:
                if n == 1 and len(ports) > 1:
                    continue
                print(f"fan-out: {label}, {n} readers", flush=True)
                r = await fanout(ports, n, args.runs)
                cross = statistics.median(r["other_minus_same_ms"]) if r["other_minus_same_ms"] else float("nan")
                lost = int(sum(r.get("incomplete", [])))
                note = f" ({lost} readers never got the reply)" if lost else ""
                fan_rows.append(f"| {label}{note} | {n} | {fmt(statistics.median(r['user_item_ms']), 1)} | "
                                f"{fmt(pct(r['user_item_ms'], 0.95), 1)} | "
                                f"{fmt(statistics.median(r['done_last_ms']), 1)}"
                                f" | {fmt(pct(r['done_last_ms'], 0.95), 1)} | "
                                f"{fmt(statistics.median(r['done_spread_ms']), 1)} | {fmt(cross, 2)} | {args.runs} |")
                print("  " + fan_rows[-1], flush=True)
        for label, writer, reader_port in (("memory", mem[0], mem[0]), ("Redis, same instance", red[0], red[0]),
                                           ("Redis, other instance", red[0], red[1])):
            print(f"resume: {label}", flush=True)
            path, last = await fill_log(writer, args.log_events)
            r = await resume(reader_port, path, last, args.runs)
            resume_rows.append(f"| {label} | {last} | {fmt(statistics.median(r['first_ms']), 1)} | "
                               f"{fmt(statistics.median(r['all_ms']), 1)} | {fmt(pct(r['all_ms'], 0.95), 1)} | "
                               f"{fmt(statistics.median(r['events_per_s']), 0)} | "
                               f"{fmt(pct(r['events_per_s'], 0.05), 0)} | "
                               f"{int(max(r['missing']))} | {args.runs} |")
            print("  " + resume_rows[-1], flush=True)
    finally:
        for client in _clients.values():
            await client.aclose()
        _clients.clear()
        for s in servers:
            stop_server(s)
        if redis is not None:
            redis.stop()
        standin.terminate()
        standin.wait(timeout=10)
    return (f"\n**SSE fan-out** (ms from `POST .../messages`; reply = {args.standin_ttft_ms:g} ms stand-in TTFT + "
            f"~37 words at {args.standin_tokens_per_s:g} tokens/s)\n\n"
            "| store | readers | user item p50 | user item p95 | `assistant.done` at last reader p50 | p95 | "
            "first->last reader | B minus A per event | runs |\n|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(fan_rows)
            + "\n\n**SSE resume** (`Last-Event-ID: 0`, whole log read back)\n\n"
              "| store | events | first event ms | all events ms p50 | p95 | events/s p50 | events/s p5 | "
              "missing | runs |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(resume_rows) + "\n")


# --- audio endpoints ------------------------------------------------------------------------------


def model_server(standin_url: str | None) -> ServerProcess:
    llm = ["--llm-base-url", standin_url, "--llm-model", "standin"] if standin_url else []
    return start_server("--api-key", KEY, *llm, ready_timeout=300)


def part_audio(server: ServerProcess, runs: int) -> str:
    import openai

    from tests.speech import all_utterances, wer

    client = openai.OpenAI(base_url=f"{server.http}/v1", api_key=KEY, max_retries=0, timeout=120)
    utterances = sorted(all_utterances(), key=lambda u: -u.samples().size)[:10]
    files = [(u, wav_bytes(u.samples() / 32768), u.samples().size / 16_000) for u in utterances]
    client.audio.transcriptions.create(model="whisper-1", file=("w.wav", files[0][1], "audio/wav"))  # warm-up
    asr_rtf, asr_ms, wers = [], [], []
    for _ in range(runs):
        for u, data, seconds in files:
            t0 = time.perf_counter()
            result = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", data, "audio/wav"))
            elapsed = time.perf_counter() - t0
            asr_ms.append(elapsed * 1000)
            asr_rtf.append(elapsed / seconds)
            wers.append(wer(u.text, result.text))
    audio_s = sum(s for _, _, s in files)
    rows = [stat_row("transcription RTF (wall / audio)", asr_rtf, 3),
            stat_row("transcription wall time (ms)", asr_ms, 0)]
    print(f"  WER {statistics.mean(wers):.3f}, audio {audio_s:.1f} s per pass", flush=True)
    for response_format in ("pcm", "wav"):
        ttfb, rtf, per_word = [], [], []
        for run in range(runs + 1):
            for text in SENTENCES:
                t0 = time.perf_counter()
                first = None
                size = 0
                with client.audio.speech.with_streaming_response.create(
                        model="tts-1", voice="alloy", input=text, response_format=response_format) as response:
                    for chunk in response.iter_bytes():
                        if chunk and first is None:
                            first = time.perf_counter() - t0
                        size += len(chunk)
                elapsed = time.perf_counter() - t0
                if response_format == "wav":
                    size -= 44
                seconds = size / 2 / 24_000
                if run:  # run 0 is warm-up
                    ttfb.append((first or elapsed) * 1000)
                    rtf.append(elapsed / seconds)
                    per_word.append(elapsed * 1000 / len(text.split()))
        rows.append(stat_row(f"speech `{response_format}`: time to first byte (ms)", ttfb, 0))
        rows.append(stat_row(f"speech `{response_format}`: RTF (total / audio)", rtf, 3))
    return table(f"/v1/audio/* through the official SDK ({len(files)} recordings, {audio_s:.0f} s of speech, "
                 f"mean WER {statistics.mean(wers):.3f}; {len(SENTENCES)} sentences of 1-37 words)",
                 "metric", rows)


# --- remote vs embedded ---------------------------------------------------------------------------


def part_remote(server: ServerProcess, runs: int) -> str:
    import numpy as np

    from tests.speech import utterance
    from voicebot.config import from_env
    from voicebot.engines.asr_openai import OpenAITranscriber
    from voicebot.engines.loader import load_asr, load_tts
    from voicebot.engines.tts_openai import OpenAISynthesizer
    from voicebot.models import default_cache_dir

    settings = from_env({})
    base = f"{server.http}/v1"
    audio = utterance("0880").samples().astype(np.float32) / 32768  # 2.99 s of real speech
    remote_asr = OpenAITranscriber(base, api_key=KEY)
    remote_tts = OpenAISynthesizer(base, api_key=KEY)
    local_asr = load_asr(settings, default_cache_dir())
    local_tts = load_tts(settings)
    times: dict[str, list[float]] = {k: [] for k in ("asr_r", "asr_e", "tts_r", "tts_e", "llm_r", "llm_e")}

    def timed(key: str, fn: Any, run: int) -> Any:
        t0 = time.perf_counter()
        value = fn()
        if run:
            times[key].append((time.perf_counter() - t0) * 1000)
        return value

    for run in range(runs + 1):
        timed("asr_r", lambda: remote_asr.transcribe(audio, "en"), run)
        timed("asr_e", lambda: local_asr.transcribe(audio, "en"), run)
        timed("tts_r", lambda: remote_tts.synthesize(FIRST_CLAUSE), run)
        timed("tts_e", lambda: local_tts.synthesize(FIRST_CLAUSE), run)
    rows = []
    for what, r, e in (("ASR, 3.0 s utterance (whole call)", "asr_r", "asr_e"),
                       ("TTS, first clause (6 words, whole clause)", "tts_r", "tts_e")):
        rows.append(overhead_row(what, times[r], times[e]))
    close = getattr(local_asr, "close", None)
    if close:
        close()
    if not skip_llm:
        rows.append(asyncio.run(llm_rows(settings, base, runs, times)))
    remote_asr.close()
    remote_tts.close()
    return ("\n**Remote (loopback voicebot) vs embedded, per stage** (ms)\n\n"
            "| stage | remote p50 | remote p95 | embedded p50 | embedded p95 | overhead (p50 diff) | n |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


skip_llm = False


def overhead_row(what: str, remote: list[float], embedded: list[float]) -> str:
    return (f"| {what} | {statistics.median(remote):.1f} | {pct(remote, 0.95):.1f} | "
            f"{statistics.median(embedded):.1f} | {pct(embedded, 0.95):.1f} | "
            f"**{statistics.median(remote) - statistics.median(embedded):+.1f}** | {len(remote)} |")


async def llm_rows(settings: Any, base: str, runs: int, times: dict[str, list[float]]) -> str:
    from voicebot.engines.base import ChatMessage
    from voicebot.engines.llm_openai import OpenAIChatModel
    from voicebot.engines.loader import load_llm

    messages = [ChatMessage("system", settings.instructions),
                ChatMessage("user", "What is the capital of France?")]
    remote = OpenAIChatModel(base, "voicebot", KEY)
    local = await asyncio.to_thread(load_llm, settings)

    async def first_token(model: Any) -> float:
        t0 = time.perf_counter()
        stream = model.stream(messages, max_tokens=4, temperature=0.0)
        async for _piece in stream:
            elapsed = time.perf_counter() - t0
            break
        await stream.aclose()
        return elapsed * 1000

    for run in range(runs + 1):
        r = await first_token(remote)
        e = await first_token(local)
        if run:
            times["llm_r"].append(r)
            times["llm_e"].append(e)
    await remote.aclose()
    close = getattr(local, "aclose", None) or getattr(local, "close", None)
    if close:
        result = close()
        if asyncio.iscoroutine(result):
            await result
    return overhead_row("LLM, time to first token (cached prompt)", times["llm_r"], times["llm_e"])


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    global skip_llm
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["sse", "audio", "remote", "all"], default="all")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--readers", default="1,10,50", help="reader counts for the fan-out")
    parser.add_argument("--log-events", type=int, default=2000, help="events in the resumed log")
    parser.add_argument("--standin-ttft-ms", type=float, default=20)
    parser.add_argument("--standin-tokens-per-s", type=float, default=400)
    parser.add_argument("--audio-passes", type=int, default=1, help="passes over the 10 recordings / sentences")
    parser.add_argument("--skip-llm", action="store_true", help="remote part: ASR and TTS only")
    args = parser.parse_args()
    skip_llm = args.skip_llm
    started = time.monotonic()
    load = os.getloadavg()[0]
    out = [f"`{' '.join(['.venv/bin/python', *sys.argv])}` (load average before: {load:.2f})"]
    if args.part in ("sse", "all"):
        out.append(asyncio.run(part_sse(args)))
        print(out[-1], flush=True)
    if args.part in ("audio", "remote", "all"):
        # remote needs the server's embedded LLM; audio alone does not (the stand-in answers nothing here)
        llm_needed = args.part in ("remote", "all") and not args.skip_llm
        standin = None
        standin_url = None
        if not llm_needed:
            port = free_port()
            standin = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "llm_standin.py"), "--port",
                                        str(port)], cwd=ROOT)
            standin_url = f"http://127.0.0.1:{port}/v1"
        server = model_server(standin_url)
        try:
            if args.part in ("audio", "all"):
                print("audio endpoints", flush=True)
                out.append(part_audio(server, args.audio_passes))
                print(out[-1], flush=True)
            if args.part in ("remote", "all"):
                print("remote vs embedded", flush=True)
                out.append(part_remote(server, args.runs))
                print(out[-1], flush=True)
        finally:
            stop_server(server)
            if standin is not None:
                standin.terminate()
                standin.wait(timeout=10)
    print("\n\n" + "\n".join(out))
    print(f"\n(total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
