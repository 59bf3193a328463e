"""Real SSE clients against the conversation stream: headless Chromium's EventSource, and
``@microsoft/fetch-event-source`` under node. In both, the server drops the stream mid-reply and
the client must reconnect by itself (Last-Event-ID) and end with the complete reply exactly once.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, scaled
from tests.e2e.sse_support import KEY, auth
from tests.session.fakes import SlowLlm
from tests.thread_server import ThreadServer

JS_DIR = ROOT / "tests" / "js"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# The page keeps what a chat widget would: the reply text per item, every id it saw, how often it
# (re)connected. Everything is exposed on window.state for the test to read.
PAGE = """<!doctype html><meta charset="utf-8"><title>sse test</title><pre id="out"></pre><script>
const q = new URLSearchParams(location.search);
window.state = {opens: 0, ids: [], users: [], replies: {}, done: null, resets: 0};
const es = new EventSource(`/v1/conversations/${q.get("conv")}/events?token=${q.get("token")}`);
es.onopen = () => { state.opens += 1; };
const seen = (e) => state.ids.push(Number(e.lastEventId));
es.addEventListener("user.message", (e) => { seen(e); state.users.push(JSON.parse(e.data).text); });
es.addEventListener("assistant.delta", (e) => {
  seen(e); const d = JSON.parse(e.data);
  state.replies[d.item_id] = (state.replies[d.item_id] || "") + d.delta;
  document.getElementById("out").textContent = state.replies[d.item_id];
});
es.addEventListener("assistant.started", seen);
es.addEventListener("assistant.done", (e) => { seen(e); state.done = JSON.parse(e.data); es.close(); });
es.addEventListener("reset", () => { state.resets += 1; });
</script>"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    web = tmp_path_factory.mktemp("web")
    (web / "sse.html").write_text(PAGE)
    # 30 words at 80 ms: the reply takes ~2.5 s, time enough to cut it in the middle.
    llm = SlowLlm(reply=" ".join(f"word{i}," for i in range(30)) + " the end.", delay=0.08)
    with ThreadServer(llm=llm, api_keys=(KEY,), web_dir=str(web), sse_retry_ms=200) as s:
        yield s


def new_conversation(server: ThreadServer) -> str:
    return str(httpx.post(f"{server.http}/v1/conversations", headers=auth(), json={}).json()["id"])


def sever_when(server: ThreadServer, cid: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        assert time.monotonic() < deadline, "the reply never started streaming"
        time.sleep(0.02)
    shared = server.hub.get(cid)
    assert shared is not None
    assert server.call(shared.sever) >= 1, "a stream was open to sever"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")
def test_browser_event_source_reconnects_and_shows_the_reply_once(server: ThreadServer) -> None:
    from playwright.sync_api import sync_playwright

    cid = new_conversation(server)
    token = httpx.post(f"{server.http}/v1/conversations/{cid}/token", headers=auth()).json()["token"]
    with sync_playwright() as p:
        # Playwright gives every launch a fresh temporary profile (it refuses --user-data-dir).
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{server.http}/sse.html?conv={cid}&token={token}")
            page.wait_for_function("window.state.opens === 1", timeout=scaled(10_000))
            r = httpx.post(f"{server.http}/v1/conversations/{cid}/messages", headers=auth(),
                           json={"text": "count for me"})
            assert r.status_code == 202

            def deltas() -> int:
                return int(page.evaluate("Object.values(window.state.replies).join('').length"))

            sever_when(server, cid, lambda: deltas() > 20, timeout=10)
            page.wait_for_function("window.state.done !== null", timeout=scaled(20_000))
            state = page.evaluate("window.state")
            page.screenshot(path=str(ROOT / "test-artifacts" / "sse-browser.png"))
        finally:
            browser.close()
    assert state["opens"] >= 2, "the browser reconnected by itself"
    assert state["resets"] == 0, "resumed from the log, not reset"
    assert state["ids"] == sorted(set(state["ids"])), "no event twice, in order"
    assert state["ids"] == list(range(1, len(state["ids"]) + 1)), "no event missed"
    assert state["users"] == ["count for me"]
    done = state["done"]
    assert list(state["replies"]) == [done["item_id"]]
    assert state["replies"][done["item_id"]] == done["text"] == server.llm.reply


@pytest.mark.skipif(shutil.which("node") is None or not (JS_DIR / "node_modules").is_dir(),
                    reason="needs node and `npm ci` in tests/js (.ci/run does it)")
def test_fetch_event_source_posts_with_auth_and_resumes(server: ThreadServer) -> None:
    cid = new_conversation(server)
    url = f"{server.http}/v1/conversations/{cid}/events"
    process = subprocess.Popen(["node", "fetch_sse.mjs", url, KEY], cwd=JS_DIR, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[dict[str, Any]] = queue.Queue()
    got: list[dict[str, Any]] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(json.loads(line))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def take(until: Any, timeout: float = 20) -> None:
        deadline = time.monotonic() + scaled(timeout)
        while not until():
            got.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))

    try:
        take(lambda: any(g["kind"] == "open" for g in got))
        assert httpx.post(f"{url.rsplit('/', 1)[0]}/messages", headers=auth(), json={"text": "go"}).status_code == 202
        sever_when(server, cid, lambda: (take(lambda: sum(g.get("event") == "assistant.delta" for g in got) > 10)
                                         or True), timeout=10)
        take(lambda: got[-1]["kind"] == "end")
        assert process.wait(timeout=scaled(10)) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    opens = [g for g in got if g["kind"] == "open"]
    assert len(opens) >= 2 and all(o["status"] == 200 for o in opens)
    assert opens[0]["type"].startswith("text/event-stream")
    assert any(g["kind"] == "close" for g in got), "the server ended the first stream"
    # The library also hands over the retry-only first frame and heartbeats, as empty messages.
    messages = [g for g in got if g["kind"] == "message" and g["event"]]
    ids = [int(m["id"]) for m in messages]
    assert ids == list(range(1, len(ids) + 1)), "resumed exactly: nothing lost, nothing twice"
    text = "".join(json.loads(m["data"])["delta"] for m in messages if m["event"] == "assistant.delta")
    done = json.loads(messages[-1]["data"])
    assert messages[-1]["event"] == "assistant.done"
    assert text == done["text"] == server.llm.reply


def test_fetch_event_source_wrong_key_is_refused(server: ThreadServer) -> None:
    if shutil.which("node") is None or not (JS_DIR / "node_modules").is_dir():
        pytest.skip("needs node and `npm ci` in tests/js")
    cid = new_conversation(server)
    out = subprocess.run(["node", "fetch_sse.mjs", f"{server.http}/v1/conversations/{cid}/events", "wrong"],
                         cwd=JS_DIR, capture_output=True, text=True, timeout=scaled(20))
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events[0] == {"kind": "open", "status": 401, "type": "application/json"}
    assert out.returncode != 0
