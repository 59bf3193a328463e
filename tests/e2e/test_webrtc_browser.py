"""The demo page over WebRTC in Chromium, against the real server and models, with real speech.

Chromium's fake capture device plays a WAV as the microphone; the page's 'WebRTC' transport
(web/webrtc.js) sends it as an Opus track and plays the assistant's track. We check what the page
shows (the words it heard, a completed turn) and what the browser's own WebRTC stack received
(inbound RTP audio with energy, from getStats()).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.e2e.test_web_demo import mint
from tests.e2e.webpage import chromium, speech_wav
from tests.speech import utterance, wer

pytestmark = pytest.mark.e2e

SPEECH = utterance("0880")  # "he was not an ill disposed young man"


def test_demo_page_talks_over_webrtc(real_server: ServerProcess, tmp_path: Path) -> None:
    microphone = tmp_path / "mic.wav"
    speech_wav(microphone, [2.0, SPEECH, 40.0])
    with chromium(microphone) as browser:
        page = browser.page
        page.goto(real_server.http + "/")
        page.click("#open-settings")
        page.select_option("#transport", "webrtc")
        page.fill("#token", mint(real_server))
        page.click("#apply")
        page.click("#talk")
        browser.wait_for("window.voicebot.connection === 'live'", 20, "the WebRTC call")
        assert page.evaluate("() => window.voicebotRtc.connectionState") == "connected"
        browser.wait_for("window.voicebot.turnsCompleted >= 1", 90, "a spoken answer")
        page.wait_for_timeout(1000)
        inbound = page.evaluate("() => window.voicebotRtc.inboundAudio()")
        counters = browser.counters()
        browser.screenshot("webrtc-demo.png")
        assert not browser.sent, "no WebSocket was used"  # the page's sockets carried nothing
        errors = browser.console_errors()
    assert wer(SPEECH.text, counters["lastUserTranscript"]) <= 0.25, counters
    assert len(counters["lastAssistantTranscript"].split()) >= 2
    # The browser received the assistant's voice as RTP: ~50 packets a second, with energy.
    assert inbound is not None and inbound["packets"] > 100, inbound
    assert inbound["energy"] > 0.001, inbound
    assert errors == [], errors
