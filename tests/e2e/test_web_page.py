"""The demo page and its token routes against a real server socket with fake engines (fast).

Fakes isolate the page's own logic (token flow, reconnect, barge-in bookkeeping, text mode) from
model speed; test_web_demo.py proves the same page with the real models and real speech.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import free_port, scaled
from tests.e2e.webpage import Browser, PortServer, chromium, require_browser, speech_wav
from tests.session.fakes import ScriptedAsr, SlowLlm, ToneTts, fake_engines
from tests.speech import utterance
from voicebot.config import from_env
from voicebot.server import create_app
from voicebot.state import AppState

KEY = "page-key"
REPLY = ("Sure, I can help with that. Here is a second sentence for you. And a third one to keep talking "
         "for quite a while longer.")


def fake_app(port: int, **settings: Any) -> Any:
    config = from_env({}, host="127.0.0.1", port=port, **settings)
    # ~60 ms of tone per character: a reply lasts several seconds, long enough to talk over.
    return create_app(config, engines=fake_engines(asr=ScriptedAsr(["hello there"]),
                                                   llm=SlowLlm(REPLY, delay=0.04), tts=ToneTts(ms_per_char=60)))


@pytest.fixture(scope="module")
def keyed() -> Iterator[PortServer]:
    """API key set, demo page tokens off: the page must be given a token."""
    port = free_port()
    with PortServer(fake_app(port, api_keys=(KEY,)), port) as server:
        yield server


@pytest.fixture(scope="module")
def demo() -> Iterator[PortServer]:
    """API key set and --demo-page-tokens on: the page mints its own short-lived tokens."""
    port = free_port()
    with PortServer(fake_app(port, api_keys=(KEY,), demo_page_tokens=True), port) as server:
        yield server


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mic") / "speech.wav"
    speech_wav(path, [1.5, utterance("0880"), 3.0, utterance("0930"), 30.0])
    return path


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mic") / "silence.wav"
    speech_wav(path, [60.0])
    return path


def state_of(server: PortServer) -> AppState:
    state: AppState = server.app.state.voicebot
    return state


# --- POST /v1/realtime/client_secrets ----------------------------------------------------------------


def test_client_secret_needs_a_real_api_key(keyed: PortServer) -> None:
    url = f"{keyed.url}/v1/realtime/client_secrets"
    assert httpx.post(url).status_code == 401
    wrong = httpx.post(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    ok = httpx.post(url, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    body = ok.json()
    assert body["value"].startswith("ek_")
    assert abs(body["expires_at"] - (time.time() + 600)) < 30
    assert body["session"]["type"] == "realtime"
    assert body["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    # A token cannot mint tokens: a leaked page token must not renew itself forever.
    again = httpx.post(url, headers={"Authorization": f"Bearer {body['value']}"})
    assert again.status_code == 401


def test_client_secret_validates_its_body(keyed: PortServer) -> None:
    url = f"{keyed.url}/v1/realtime/client_secrets"
    auth = {"Authorization": f"Bearer {KEY}"}
    short = httpx.post(url, headers=auth, json={"expires_after": {"anchor": "created_at", "seconds": 60}})
    assert short.status_code == 200 and abs(short.json()["expires_at"] - (time.time() + 60)) < 30
    # The hosted API's SDKs always send a session; it is validated, then the client configures
    # the session with session.update once connected.
    with_session = httpx.post(url, headers=auth, json={"session": {"type": "realtime", "instructions": "Be brief."}})
    assert with_session.status_code == 200
    too_short = httpx.post(url, headers=auth, json={"expires_after": {"seconds": 1}})
    assert too_short.status_code == 400
    assert too_short.json()["error"]["param"] == "expires_after.seconds"
    bad = httpx.post(url, headers={**auth, "Content-Type": "application/json"}, content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    bad_session = httpx.post(url, headers=auth, json={"session": {"output_modalities": "loud"}})
    assert bad_session.status_code == 400
    assert httpx.get(f"{keyed.url}/healthz").status_code == 200


async def test_minted_token_opens_the_realtime_socket(keyed: PortServer) -> None:
    async with httpx.AsyncClient() as http:
        secret = (await http.post(f"{keyed.url}/v1/realtime/client_secrets",
                                  headers={"Authorization": f"Bearer {KEY}"})).json()
    ws_url = f"ws://127.0.0.1:{keyed.port}/v1/realtime?model=voicebot"
    async with websockets.connect(ws_url, subprotocols=["realtime", f"openai-insecure-api-key.{secret['value']}"],
                                  origin=f"http://127.0.0.1:{keyed.port}") as ws:
        assert ws.subprotocol == "realtime"
        first = await asyncio.wait_for(ws.recv(), timeout=5)
        assert '"session.created"' in first
    expired, _ = state_of(keyed).auth.tokens.mint(ttl_s=-1)
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(ws_url, subprotocols=["realtime", f"openai-insecure-api-key.{expired}"]):
            pass
    assert refused.value.response.status_code == 401


# --- POST /v1/demo/client_secret ---------------------------------------------------------------------


def test_demo_tokens_are_off_by_default_when_keys_are_set(keyed: PortServer) -> None:
    refused = httpx.post(f"{keyed.url}/v1/demo/client_secret")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "demo_tokens_disabled"
    assert refused.json()["auth_required"] is True


def test_demo_tokens_when_enabled_same_origin_only(demo: PortServer) -> None:
    url = f"{demo.url}/v1/demo/client_secret"
    ok = httpx.post(url, headers={"Origin": demo.url})
    assert ok.status_code == 200
    body = ok.json()
    assert body["value"].startswith("ek_") and body["auth_required"] is True
    assert body["expires_at"] - time.time() < 200  # short-lived: minted right before connecting
    assert state_of(demo).auth.accepts(body["value"])
    other_site = httpx.post(url, headers={"Origin": "https://evil.example"})
    assert other_site.status_code == 403 and other_site.json()["error"]["code"] == "origin_not_allowed"


def test_demo_tokens_without_api_keys() -> None:
    port = free_port()
    with PortServer(fake_app(port), port) as server:
        body = httpx.post(f"{server.url}/v1/demo/client_secret").json()
        assert body["auth_required"] is False and body["value"].startswith("ek_")
        assert httpx.post(f"{server.url}/v1/realtime/client_secrets").status_code == 200


# --- the page in Chromium ----------------------------------------------------------------------------


def _load(browser: Browser, server: PortServer) -> None:
    browser.page.goto(server.url + "/")
    browser.page.wait_for_selector("#talk")


def test_page_talk_and_barge_in(demo: PortServer, speech: Path) -> None:
    """One voice turn, then speech over the reply: playback stops at once and a truncate is sent."""
    with chromium(speech) as browser:
        _load(browser, demo)
        browser.page.click("#talk")
        browser.wait_for("window.voicebot.connection === 'live'", 15, "connection")
        browser.start_sampler()
        browser.wait_for("window.voicebot.playedMs > 0", 20, "assistant audio")
        browser.wait_for("window.voicebot.bargeIns >= 1", 20, "barge-in")
        browser.page.wait_for_timeout(1200)
        shot = browser.screenshot("web-page-fake-bargein.png")
        counters = browser.counters()
        samples = browser.samples()
        errors = browser.console_errors()
    assert not errors, errors
    assert shot.stat().st_size > 10_000
    assert counters["lastUserTranscript"] == "hello there"
    assert counters["lastLatencyMs"] is not None and counters["lastLatencyMs"] > 0
    _assert_playback_stopped(samples)
    truncates = [e for e in browser.sent if e["type"] == "conversation.item.truncate"]
    assert len(truncates) == 1, browser.sent
    assert 0 < truncates[0]["audio_end_ms"] <= counters["playedMs"] + 1
    assert any(e["type"] == "conversation.item.truncated" for e in browser.received)
    assert not [e for e in browser.received if e["type"] == "error"]
    sent_types = [e["type"] for e in browser.sent]
    assert sent_types[0] == "session.update"
    session = browser.sent[0]["session"]
    # The page asks for the server's default turn detection.
    assert session["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    assert session["audio"]["input"]["turn_detection"]["eagerness"] == "auto"
    assert session["audio"]["input"]["transcription"] is not None


def _assert_playback_stopped(samples: list[tuple[float, float, int]], within_ms: float = 300) -> None:
    """After the first barge-in, played audio must stop growing within ``within_ms``."""
    first = next(i for i, s in enumerate(samples) if s[2] >= 1)
    t_barge = samples[first][0]
    assert samples[first][1] > 0, "nothing had been played before the barge-in"
    settled = [s for s in samples if t_barge + within_ms <= s[0] <= t_barge + 1000]
    assert settled, "not enough samples after the barge-in"
    assert max(s[1] for s in settled) == min(s[1] for s in settled), settled[:5]


def test_page_asks_for_a_token_then_uses_a_pasted_one(keyed: PortServer, quiet: Path) -> None:
    secret = httpx.post(f"{keyed.url}/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {KEY}"}).json()
    with chromium(quiet) as browser:
        _load(browser, keyed)
        page = browser.page
        page.click("#talk")
        browser.wait_for("window.voicebot.connection === 'needs-token'", 10, "the token prompt")
        assert page.is_visible("#voice-notice")
        assert "token" in page.inner_text("#voice-notice").lower()
        page.click("#open-settings")
        page.fill("#token", secret["value"])
        page.click("#apply")
        page.click("#talk")
        browser.wait_for("window.voicebot.connection === 'live'", 15, "connection with the pasted token")
        assert not page.is_visible("#voice-notice")
        # The browser logs the refused demo-token request itself; nothing else may fail.
        errors = browser.console_errors(allow=lambda text: "403" in text)
    assert not errors, errors


def test_fixed_silence_setting_sends_server_vad(demo: PortServer, quiet: Path) -> None:
    """Picking "Fixed silence" shows its sliders and the server confirms exactly those settings."""
    with chromium(quiet) as browser:
        _load(browser, demo)
        page = browser.page
        page.click("#open-settings")
        assert not page.is_visible("#silence")
        page.select_option("#turn", "server_vad")
        assert page.is_visible("#silence")
        page.fill("#silence", "800")
        page.click("#apply")
        page.click("#talk")
        browser.wait_for("window.voicebot.connection === 'live'", 15, "connection")
        deadline = time.monotonic() + 10
        while not any(e["type"] == "session.updated" for e in browser.received) and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert not browser.console_errors()
    detection = browser.sent[0]["session"]["audio"]["input"]["turn_detection"]
    assert detection["type"] == "server_vad" and detection["silence_duration_ms"] == 800
    updated = [e for e in browser.received if e["type"] == "session.updated"][-1]
    confirmed = updated["session"]["audio"]["input"]["turn_detection"]
    assert confirmed["type"] == "server_vad" and confirmed["silence_duration_ms"] == 800


def test_page_reconnects_after_a_server_restart(quiet: Path) -> None:
    port = free_port()
    with chromium(quiet) as browser:
        with PortServer(fake_app(port, api_keys=(KEY,), demo_page_tokens=True), port) as first:
            _load(browser, first)
            browser.page.click("#talk")
            browser.wait_for("window.voicebot.connection === 'live'", 15, "first connection")
        browser.wait_for("window.voicebot.connection === 'reconnecting'", 10, "reconnecting state")
        assert "Reconnecting" in browser.page.inner_text("#conn")
        with PortServer(fake_app(port, api_keys=(KEY,), demo_page_tokens=True), port):
            browser.wait_for("window.voicebot.connection === 'live'", 30, "reconnection")
            assert sum(1 for e in browser.sent if e["type"] == "session.update") == 2
        # Only the page's own connection attempts against a stopped server may have failed.
        errors = browser.console_errors(allow=lambda t: "ERR_CONNECTION_REFUSED" in t or "WebSocket" in t)
    assert not errors, errors


def test_counters_are_read_only(demo: PortServer) -> None:
    with chromium() as browser:
        _load(browser, demo)
        result = browser.page.evaluate("""() => {
            'use strict';
            const outcomes = [];
            for (const attempt of [() => { window.voicebot.bargeIns = 99; }, () => { window.voicebot = {}; },
                                   () => { window.voicebot.extra = 1; }]) {
                try { attempt(); outcomes.push('allowed'); } catch (e) { outcomes.push(e.name); }
            }
            return {outcomes, bargeIns: window.voicebot.bargeIns, frozen: Object.isFrozen(window.voicebot)};
        }""")
        assert result == {"outcomes": ["TypeError"] * 3, "bargeIns": 0, "frozen": True}
        assert set(browser.counters()) >= {"turnsCompleted", "lastUserTranscript", "lastAssistantTranscript",
                                           "playedMs", "bargeIns", "lastLatencyMs"}
        assert not browser.console_errors()


def test_text_mode_streams_the_answer(demo: PortServer) -> None:
    with chromium() as browser:
        _load(browser, demo)
        page = browser.page
        page.click("#tab-text")
        page.fill("#message", "Can you help me?")
        page.press("#message", "Enter")
        lengths: list[int] = []
        deadline = time.monotonic() + scaled(20)
        while time.monotonic() < deadline:
            texts = page.eval_on_selector_all("#text-log .msg.assistant .heard", "els => els.map(e => e.textContent)")
            if texts:
                lengths.append(len(texts[-1]))
                if texts[-1] == REPLY and not page.is_visible("#text-log .msg.assistant.placeholder"):
                    break
            page.wait_for_timeout(30)
        users = page.eval_on_selector_all("#text-log .msg.user .heard", "els => els.map(e => e.textContent)")
        final = page.eval_on_selector_all("#text-log .msg.assistant .heard", "els => els.map(e => e.textContent)")
        assert not browser.console_errors()
    assert users == ["Can you help me?"]
    assert final == [REPLY]
    growing = sorted(set(n for n in lengths if 0 < n < len(REPLY)))
    assert len(growing) >= 3, f"the answer did not arrive in pieces: {lengths}"


def test_phone_layout(demo: PortServer) -> None:
    """A phone-sized viewport: nothing overflows sideways; screenshots for a person to look at."""
    with chromium(viewport=(390, 844), mobile=True) as browser:
        _load(browser, demo)
        page = browser.page
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390
        assert page.is_visible("#talk")
        box = page.locator("#talk").bounding_box()
        assert box is not None and box["y"] + box["height"] <= 844
        browser.screenshot("web-page-phone.png")
        page.click("#open-settings")
        page.wait_for_selector("#settings[open]")
        browser.screenshot("web-page-phone-settings.png")
        page.keyboard.press("Escape")
        assert not page.is_visible("#settings")
        assert not browser.console_errors()


def test_keyboard_only(demo: PortServer) -> None:
    """Tab reaches the controls in order with a visible focus ring; arrows switch modes."""
    require_browser()
    with chromium() as browser:
        _load(browser, demo)
        page = browser.page
        order = []
        for _ in range(5):
            page.keyboard.press("Tab")
            order.append(page.evaluate("() => document.activeElement.id"))
        assert order[:3] == ["open-settings", "tab-voice", "talk"]
        page.focus("#tab-voice")
        page.keyboard.press("ArrowRight")
        assert page.evaluate("() => document.activeElement.id") == "tab-text"
        assert page.is_visible("#panel-text") and not page.is_visible("#panel-voice")
        outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"
        assert not browser.console_errors()
