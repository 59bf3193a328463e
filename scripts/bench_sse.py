"""Benchmark the text-over-SSE transport: idle streams held, fan-out of a reply, added TTFT.

    .venv/bin/python scripts/bench_sse.py                       # 1000 / 5000 / 10000 idle streams
    .venv/bin/python scripts/bench_sse.py --streams 1000 --window 10

The server runs in a child process with *fake* engines (tests/session/fakes.py): the numbers are
the transport's own cost (uvicorn + starlette + our hub), not the model's. Clients are raw asyncio
sockets in this process (an HTTP library per stream would measure itself). Everything is on
127.0.0.1; both processes raise RLIMIT_NOFILE to its hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY = "bench-key"


def raise_fd_limit() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve(port: int, heartbeat: float, tokens: int) -> None:
    """Child process: the real app with fake engines."""
    raise_fd_limit()
    import uvicorn

    from tests.session.fakes import SlowLlm, fake_engines
    from voicebot.config import from_env
    from voicebot.server import create_app

    llm = SlowLlm(reply=" ".join(f"w{i}" for i in range(tokens)), delay=0.0)
    settings = from_env({}, host="127.0.0.1", port=port, api_keys=(KEY,), sse_heartbeat_s=heartbeat)
    app = create_app(settings, engines=fake_engines(llm=llm))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=4096)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stream:
    """One SSE connection on a raw socket: counts frames, heartbeats, and remembers arrival times."""

    def __init__(self) -> None:
        self.heartbeats = 0
        self.events: list[tuple[float, str]] = []
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, port: int, path: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer = writer
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        self.ready.set()
        buffer = b""
        while chunk := await reader.read(65536):
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                if b": ping" in frame:
                    self.heartbeats += 1
                if b"event: " in frame:
                    name = frame.split(b"event: ", 1)[1].split(b"\n", 1)[0].decode()
                    self.events.append((time.perf_counter(), name))
                    if name == "assistant.done":
                        self.done.set()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


async def http_json(port: int, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                 headers={"Authorization": f"Bearer {KEY}"}) as client:
        r = await client.request(method, path, json=body)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]


async def open_streams(port: int, path: str, n: int) -> list[Stream]:
    streams: list[Stream] = []
    for start in range(0, n, 500):  # in batches: the listen backlog is finite
        batch = [Stream() for _ in range(min(500, n - start))]
        for s in batch:
            s.task = asyncio.create_task(s.run(port, path))
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in batch)), 60)
        streams += batch
    return streams


async def bench_idle(port: int, pid: int, n: int, window: float, heartbeat: float) -> dict[str, float]:
    conv = await http_json(port, "POST", "/v1/conversations", {})
    await asyncio.sleep(0.5)
    rss0 = rss_kib(pid)
    streams = await open_streams(port, f"/v1/conversations/{conv['id']}/events", n)
    await asyncio.sleep(1.0)
    rss1 = rss_kib(pid)
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    beats0 = sum(s.heartbeats for s in streams)
    await asyncio.sleep(window)
    cpu1, t1 = cpu_s(pid), time.perf_counter()
    beats = sum(s.heartbeats for s in streams) - beats0
    for s in streams:
        s.close()
    await asyncio.sleep(1.0)
    return {"streams": n, "rss_per_stream_kib": round((rss1 - rss0) / n, 2), "rss_mib": round(rss1 / 1024, 1),
            "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 2), "heartbeats": beats,
            "expected_heartbeats": int(n * window / heartbeat)}


async def bench_fanout(port: int, pid: int, listeners: int, runs: int) -> dict[str, float]:
    spreads, totals, cpus = [], [], []
    events = 0
    for _ in range(runs):
        conv = await http_json(port, "POST", "/v1/conversations", {})
        streams = await open_streams(port, f"/v1/conversations/{conv['id']}/events", listeners)
        await asyncio.sleep(0.2)
        cpu0, t0 = cpu_s(pid), time.perf_counter()
        await http_json(port, "POST", f"/v1/conversations/{conv['id']}/messages", {"text": "go"})
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in streams)), 60)
        cpu1 = cpu_s(pid)
        last = [s.events[-1][0] for s in streams]
        spreads.append((max(last) - min(last)) * 1000)
        totals.append((max(last) - t0) * 1000)
        events = len(streams[0].events)
        cpus.append((cpu1 - cpu0) * 1e6 / (events * listeners))
        for s in streams:
            s.close()
    return {"listeners": listeners, "events_per_reply": events,
            "reply_to_all_ms_median": round(statistics.median(totals), 1),
            "first_to_last_listener_ms_median": round(statistics.median(spreads), 2),
            "server_cpu_us_per_event_per_listener": round(statistics.median(cpus), 2)}


async def bench_ttft(port: int, runs: int) -> dict[str, float]:
    """First content chunk over HTTP vs the first piece from the same fake engine called directly."""
    import httpx

    from tests.session.fakes import SlowLlm
    from voicebot.engines.base import ChatMessage

    llm = SlowLlm(delay=0.0)
    direct = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it = llm.stream([ChatMessage("user", "hi")], max_tokens=64, temperature=0.7)
        await it.__anext__()
        direct.append((time.perf_counter() - t0) * 1000)
        await it.aclose()  # type: ignore[attr-defined]
    http = []
    # A short reply read to the end: an abandoned stream would cost the keep-alive connection.
    body = {"model": "voicebot", "stream": True, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                 headers={"Authorization": f"Bearer {KEY}"}) as client:
        for i in range(runs + 10):
            t0 = time.perf_counter()
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                first = None
                async for line in response.aiter_lines():
                    if first is None and line.startswith("data: {") and '"content":"' in line \
                            and '"content":""}' not in line:
                        first = (time.perf_counter() - t0) * 1000
                if i >= 10 and first is not None:  # the first 10 are warm-up
                    http.append(first)
        rtt = []  # the floor: one small request/response on the same keep-alive connection
        for _ in range(runs):
            t0 = time.perf_counter()
            (await client.get("/v1/models")).raise_for_status()
            rtt.append((time.perf_counter() - t0) * 1000)

    def q(values: list[float], p: float) -> float:
        return round(sorted(values)[int(p * (len(values) - 1))], 3)

    return {"runs": runs, "direct_ms_median": q(direct, 0.5), "http_ms_median": q(http, 0.5),
            "http_ms_p95": q(http, 0.95), "added_ms_median": round(q(http, 0.5) - q(direct, 0.5), 3),
            "plain_request_ms_median": q(rtt, 0.5)}


async def main(args: argparse.Namespace) -> None:
    raise_fd_limit()
    from tests.conftest import free_port

    port = free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(port), "--heartbeat", str(args.heartbeat),
        "--tokens", str(args.tokens), cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await http_json(port, "GET", "/v1/models")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        results: dict[str, object] = {"command": " ".join(sys.argv), "heartbeat_s": args.heartbeat}
        results["ttft"] = await bench_ttft(port, args.ttft_runs)
        print(json.dumps(results["ttft"]), flush=True)
        results["fanout"] = await bench_fanout(port, child.pid, args.listeners, args.fanout_runs)
        print(json.dumps(results["fanout"]), flush=True)
        idle = []
        for n in args.streams:
            idle.append(await bench_idle(port, child.pid, n, args.window, args.heartbeat))
            print(json.dumps(idle[-1]), flush=True)
        results["idle"] = idle
        print(json.dumps(results, indent=2))
    finally:
        child.terminate()
        await asyncio.wait_for(child.wait(), 20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--window", type=float, default=10.0, help="seconds of idle CPU measured per size")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="server heartbeat interval (s)")
    parser.add_argument("--listeners", type=int, default=100)
    parser.add_argument("--fanout-runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200, help="tokens in the fake reply (fan-out)")
    parser.add_argument("--ttft-runs", type=int, default=200)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve:
        serve(ns.serve, ns.heartbeat, ns.tokens)
    else:
        asyncio.run(main(ns))
