"""Engine faults mid-turn: an exception or a stall in ASR, LLM or TTS.

Each must give the client an ``error`` event with the fault's code, end the response with
``response.done`` status ``failed`` (its status_details carrying the same error), and leave the
session able to answer the next turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .fakes import FaultyAsr, FaultyLlm, FaultyTts, ScriptedAsr, SlowLlm, ToneTts, silence, tone
from .test_session import Harness

#: Small stall bounds so a hang is detected quickly; the fakes hang for seconds.
TIMEOUTS = {"engine_timeout_s": 0.6, "llm_first_token_timeout_s": 0.6, "llm_token_timeout_s": 0.6}


def _harness(asr: ScriptedAsr | None = None, llm: SlowLlm | None = None, tts: ToneTts | None = None) -> Harness:
    # No replies thought ahead during the pause: a fault there is silent (the turn's end asks
    # again), and these tests are about the reply the user waits for.
    return Harness(asr=asr, llm=llm, tts=tts or ToneTts(ms_per_char=8), speculative_replies=False, **TIMEOUTS)


async def _voice_turn(h: Harness, n: int, timeout: float = 15) -> dict[str, Any]:
    """Speak one turn and return its response.done (the n-th)."""
    await h.speak(tone(700) + silence(900))
    return (await h.wait_for("response.done", n, timeout=timeout))["response"]


def _release(engine: Any) -> None:
    engine.fault.release.set()


CASES = [
    pytest.param("asr", "raise", "asr_failed", id="asr-raises"),
    pytest.param("asr", "hang", "engine_timeout", id="asr-hangs"),
    pytest.param("llm-first", "raise", "llm_failed", id="llm-raises-before-first-token"),
    pytest.param("llm-mid", "raise", "llm_failed", id="llm-raises-mid-reply"),
    pytest.param("llm-first", "hang", "engine_timeout", id="llm-hangs-before-first-token"),
    pytest.param("llm-mid", "hang", "engine_timeout", id="llm-hangs-between-tokens"),
    pytest.param("tts", "raise", "tts_failed", id="tts-raises"),
    pytest.param("tts", "hang", "engine_timeout", id="tts-hangs"),
]


@pytest.mark.parametrize(("engine", "mode", "code"), CASES)
async def test_an_engine_fault_fails_the_turn_and_the_next_turn_works(engine: str, mode: str, code: str) -> None:
    faulty: Any
    if engine == "asr":
        faulty = FaultyAsr(mode)
        h = _harness(asr=faulty)
    elif engine.startswith("llm"):
        faulty = FaultyLlm(mode, where=engine.removeprefix("llm-"))
        h = _harness(llm=faulty)
    else:
        faulty = FaultyTts(mode, ms_per_char=8)
        h = _harness(tts=faulty)
    try:
        first = await _voice_turn(h, 1)
        assert first["status"] == "failed", first
        assert first["status_details"]["type"] == "failed"
        assert first["status_details"]["error"]["code"] == code
        errors = h.errors()
        assert [e["code"] for e in errors] == [code], errors
        assert errors[0]["type"] == "server_error" and errors[0]["message"]
        # The session goes on: the next turn is answered in full.
        await asyncio.sleep(0.3)
        second = await _voice_turn(h, 2)
        assert second["status"] == "completed", (second, h.errors())
        assert h.of("response.output_audio_transcript.done")[-1]["transcript"] == h.llm.reply
        assert len(h.errors()) == 1
    finally:
        _release(faulty)
        await h.session.close()
    assert h.session.active_tasks == 0


async def test_a_text_response_whose_llm_fails_is_failed_and_the_next_one_works() -> None:
    llm = FaultyLlm("raise")
    h = _harness(llm=llm)
    try:
        await h.send(type="session.update", session={"output_modalities": ["text"]})
        await h.send(type="conversation.item.create", item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi?"}]})
        await h.send(type="response.create", event_id="r1")
        done = (await h.wait_for("response.done"))["response"]
        assert done["status"] == "failed" and done["status_details"]["error"]["code"] == "llm_failed"
        assert "injected LLM fault" in h.errors()[0]["message"]
        await h.send(type="response.create")
        done = (await h.wait_for("response.done", 2))["response"]
        assert done["status"] == "completed"
        assert "".join(e["delta"] for e in h.of("response.output_text.delta")) == llm.reply
    finally:
        await h.session.close()
