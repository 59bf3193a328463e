"""``/v1/chat/completions`` and ``/v1/models`` through the official ``openai`` SDK.

Most cases use a fake LLM (exact text, and an ``active`` counter that shows when generation
stops); one module-level group runs the embedded Qwen through the real server process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import scaled
from tests.e2e.sse_support import KEY, auth
from tests.session.fakes import SlowLlm
from tests.thread_server import ThreadServer

USER = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    with ThreadServer(llm=SlowLlm(delay=0.05), api_keys=(KEY,), max_text_bytes=8192) as s:
        yield s


@pytest.fixture
def sdk(server: ThreadServer) -> OpenAI:
    return OpenAI(api_key=KEY, base_url=f"{server.http}/v1", max_retries=0)


def wait_until(predicate: object, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_non_streaming_completion(server: ThreadServer, sdk: OpenAI) -> None:
    completion = sdk.chat.completions.create(model="voicebot", messages=USER,  # type: ignore[arg-type]
                                             temperature=0.2)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == server.llm.reply
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == len(server.llm.reply.split())
    assert [(m.role, m.content) for m in server.llm.requests[-1]] == [("user", "Hello!")]


def test_streaming_completion_with_usage(server: ThreadServer, sdk: OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="voicebot", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "developer", "content": "Be nice."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}])
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == server.llm.reply
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [(m.role, m.content) for m in server.llm.requests[-1]] == [("system", "Be nice."), ("user", "Hi!")]


def test_max_tokens_gives_length_finish(server: ThreadServer, sdk: OpenAI) -> None:
    completion = sdk.chat.completions.create(model="m", messages=USER, max_tokens=3)  # type: ignore[arg-type]
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Sure, I can"
    assert completion.model == "m"


def test_models_lists_the_llm(server: ThreadServer, sdk: OpenAI) -> None:
    models = sdk.models.list()
    assert [m.id for m in models.data] == [server.llm.name]


def test_dropped_stream_stops_the_llm_at_once(server: ThreadServer) -> None:
    llm = server.llm
    closed_before = llm.closed
    with httpx.stream("POST", f"{server.http}/v1/chat/completions", headers=auth(),
                      json={"messages": USER, "stream": True}) as response:
        got: list[str] = []
        for line in response.iter_lines():
            if line.startswith("data:"):
                got.append(line)
            if len(got) >= 3:
                # Checked before leaving the loop: breaking out of iter_lines() closes the
                # connection at once (CPython closes the abandoned generator chain).
                assert llm.active == 1
                break
    dropped = time.monotonic()
    assert wait_until(lambda: llm.active == 0 and llm.closed == closed_before + 1, timeout=2)
    # 23 words at 50 ms would take > 1 s; the close arrived within a couple of tokens.
    assert time.monotonic() - dropped < 0.5


def test_dropped_non_streaming_request_stops_the_llm(server: ThreadServer) -> None:
    llm = server.llm
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.http}/v1/chat/completions", headers=auth(), json={"messages": USER}, timeout=0.3)
    assert wait_until(lambda: llm.active == 0, timeout=1)


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"messages": []}, 400, "invalid_value"),
    ({}, 400, "missing_required_parameter"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value"),
    ({"messages": USER, "temperature": 9}, 400, "invalid_value"),
    ({"messages": USER, "n": 2}, 400, "invalid_value"),
    ({"messages": [{"role": "user", "content": "x" * 9000}]}, 413, "request_too_large"),
])
def test_bad_requests_get_openai_shaped_errors(server: ThreadServer, sdk: OpenAI, body: dict[str, object],
                                               status: int, code: str) -> None:
    r = httpx.post(f"{server.http}/v1/chat/completions", headers=auth(), json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_sdk_surfaces_auth_and_validation_errors(server: ThreadServer) -> None:
    bad = OpenAI(api_key="wrong", base_url=f"{server.http}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = OpenAI(api_key=KEY, base_url=f"{server.http}/v1", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        good.chat.completions.create(model="m", messages=[])
    r = httpx.post(f"{server.http}/v1/chat/completions", headers=auth(), content=b"{oops")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


# --- the embedded model -----------------------------------------------------------------------------


def _generation_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "voicebot-llm" and t.is_alive())


@pytest.mark.e2e
def test_real_model_answers_and_stops_when_dropped() -> None:
    """The embedded Qwen behind the HTTP server: an answer, then a dropped stream ends its thread."""
    from voicebot.engines.llm_llamacpp import LlamaCppModel
    from voicebot.models import llm_model_path

    qwen = LlamaCppModel(llm_model_path(), threads=2, context=2048, parallel=1)
    try:
        with ThreadServer(llm=qwen, api_keys=(KEY,)) as server:  # type: ignore[arg-type]
            sdk = OpenAI(api_key=KEY, base_url=f"{server.http}/v1", max_retries=0, timeout=scaled(120))
            completion = sdk.chat.completions.create(
                model="voicebot", temperature=0, max_tokens=16,
                messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}])
            assert "paris" in (completion.choices[0].message.content or "").lower()

            stream = sdk.chat.completions.create(
                model="voicebot", stream=True, temperature=0.8, max_tokens=256,
                messages=[{"role": "user", "content": "Tell me a very long story about a lighthouse keeper."}])
            pieces = []
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if len(pieces) >= 8:
                    break
            assert _generation_threads() == 1, "the model is generating"
            stream.close()  # the client goes away mid-reply
            # The generation thread checks its stop flag after every token, then exits.
            assert wait_until(lambda: _generation_threads() == 0, timeout=scaled(2))
    finally:
        qwen.close()
