"""Driving the demo page in the system Chromium (Playwright for Python, never its own browser).

The microphone is a real speech WAV played by Chromium's fake capture device; the page's
``window.voicebot`` counters are sampled inside the page every 10 ms, so timing checks (the
played audio stops growing after a barge-in) do not depend on how fast the test process polls.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from tests.conftest import ARTIFACTS, scaled
from tests.speech import Utterance

CHROMIUM = Path("/usr/bin/chromium")
QUIET_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RATE = 16_000


def require_browser() -> Any:
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    return playwright


def speech_wav(path: Path, parts: list[Utterance | float]) -> dict[str, tuple[float, float]]:
    """Write a 16 kHz PCM16 WAV of utterances and silences (floats, seconds); return where each
    utterance lies (start, end in seconds)."""
    chunks: list[np.ndarray] = []
    spans: dict[str, tuple[float, float]] = {}
    at = 0.0
    for part in parts:
        samples = np.zeros(int(RATE * part), np.int16) if isinstance(part, float) else part.samples()
        if not isinstance(part, float):
            spans[part.name] = (at, at + samples.size / RATE)
        chunks.append(samples)
        at += samples.size / RATE
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate(chunks).astype("<i2").tobytes())
    return spans


@dataclass
class Browser:
    page: Any
    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)  # client events on the page's WebSockets
    received: list[dict[str, Any]] = field(default_factory=list)

    def console_errors(self, allow: Callable[[str], bool] = lambda _t: False) -> list[str]:
        found = [text for kind, text in self.console if kind == "error" and not allow(text)]
        return found + self.errors

    def counters(self) -> dict[str, Any]:
        value: dict[str, Any] = self.page.evaluate(
            "() => Object.fromEntries(Object.keys(Object.getOwnPropertyDescriptors(window.voicebot))"
            ".map((k) => [k, window.voicebot[k]]))")
        return value

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll a JS expression until truthy; fail with the counters if it never is."""
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            value = self.page.evaluate(expression)
            if value:
                return value
            self.page.wait_for_timeout(50)
        raise AssertionError(f"timed out waiting for {what}; counters={self.counters()}")

    def start_sampler(self) -> None:
        """Record (ms since start, playedMs, bargeIns) every 10 ms inside the page."""
        self.page.evaluate("""() => {
            window.__samples = [];
            const t0 = performance.now();
            setInterval(() => window.__samples.push(
                [performance.now() - t0, window.voicebot.playedMs, window.voicebot.bargeIns]), 10);
        }""")

    def samples(self) -> list[tuple[float, float, int]]:
        return [tuple(s) for s in self.page.evaluate("() => window.__samples")]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path))
        return path


#: Mixes extra speech into the page's microphone stream on cue (``window.__say(base64 pcm16 16 kHz)``),
#: on top of what Chromium's fake capture device plays from the WAV. The page's capture path is
#: unchanged; only the moment of the second utterance is chosen by the test (while the answer
#: plays), because on a busy machine the answer's start cannot be predicted by a fixed timeline.
SAY_SHIM = """(() => {
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia) return;
  const real = md.getUserMedia.bind(md);
  md.getUserMedia = async (constraints) => {
    const stream = await real(constraints);
    const ctx = new AudioContext();
    await ctx.resume();
    const dest = ctx.createMediaStreamDestination();
    const mic = ctx.createMediaStreamSource(stream);
    mic.connect(dest);
    // The loudest 20 ms of the (echo-cancelled, gain-controlled) microphone so far: the injected
    // speech is played at that loudness, as the same person at the same microphone would be heard
    // (it joins after Chromium's gain control, which would otherwise have levelled it).
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    mic.connect(analyser);
    const frame = new Float32Array(analyser.fftSize);
    window.__micPeak = 0;
    setInterval(() => {
      analyser.getFloatTimeDomainData(frame);
      const rms = Math.sqrt(frame.reduce((a, v) => a + v * v, 0) / frame.length);
      window.__micPeak = Math.max(window.__micPeak, rms);
    }, 20);
    const peakRms = (x) => {
      let best = 0;
      for (let i = 0; i + 320 <= x.length; i += 320) {
        let e = 0;
        for (let j = i; j < i + 320; j++) e += x[j] * x[j];
        best = Math.max(best, Math.sqrt(e / 320));
      }
      return best;
    };
    window.__say = (b64) => new Promise((resolve) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const pcm = new Int16Array(bytes.buffer);
      const samples = Float32Array.from(pcm, (v) => v / 32768);
      const buffer = ctx.createBuffer(1, pcm.length, 16000);
      buffer.getChannelData(0).set(samples);
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      const gain = ctx.createGain();
      const own = peakRms(samples);
      gain.gain.value = window.__micPeak > 0 && own > 0 ? Math.min(8, Math.max(0.25, window.__micPeak / own)) : 1;
      window.__sayGain = gain.gain.value;
      source.connect(gain).connect(dest);
      source.onended = () => resolve(true);
      source.start();
    });
    return dest.stream;
  };
})();"""


@contextlib.contextmanager
def chromium(microphone: Path | None = None, *, viewport: tuple[int, int] = (1280, 800),
             mobile: bool = False, say: bool = False) -> Iterator[Browser]:
    """A fresh Chromium profile; ``microphone`` is a WAV played once (``%noloop``) as the mic;
    ``say`` installs :data:`SAY_SHIM`."""
    sync_api = require_browser()
    args = list(QUIET_FLAGS)
    if say:
        args.append("--autoplay-policy=no-user-gesture-required")
    if microphone is not None:
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={microphone}%noloop"]
    profile = tempfile.mkdtemp(prefix="voicebot-chromium-")
    try:
        with sync_api.sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=args,
                viewport={"width": viewport[0], "height": viewport[1]}, is_mobile=mobile, has_touch=mobile,
                device_scale_factor=2 if mobile else 1)
            try:
                page = context.pages[0] if context.pages else context.new_page()
                browser = Browser(page)
                if say:
                    page.add_init_script(SAY_SHIM)
                page.on("console", lambda m: browser.console.append((m.type, m.text)))
                page.on("pageerror", lambda e: browser.errors.append(f"pageerror: {e}"))

                def on_socket(ws: Any) -> None:
                    def keep(into: list[dict[str, Any]]) -> Callable[[Any], None]:
                        def handler(payload: Any) -> None:
                            with contextlib.suppress(ValueError, TypeError):
                                event = json.loads(payload)
                                if event.get("type") != "input_audio_buffer.append":
                                    into.append(event)
                        return handler
                    ws.on("framesent", keep(browser.sent))
                    ws.on("framereceived", keep(browser.received))

                page.on("websocket", on_socket)
                yield browser
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class PortServer:
    """uvicorn in a thread on a given port, with the given engines (for restart tests)."""

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_ping_interval=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> PortServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
