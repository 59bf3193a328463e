"""The remote LLM client, against a real OpenAI-compatible server: xllamacpp's own loopback
listener serving the tiny random GGUF (no network, no mocks of the HTTP layer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_engine_llm import user as user_messages
from tests.unit.test_engine_llm import write_tiny_gguf
from voicebot.engines.llm_llamacpp import LlamaCppModel
from voicebot.engines.llm_openai import OpenAIChatModel
from voicebot.errors import EngineError

#: The tiny model has random weights: it may sample end-of-sequence as its very first token.
#: llama-server's ``ignore_eos`` (passed through extra_body) makes every run produce tokens.
NEVER_STOP = {"ignore_eos": True}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    model = LlamaCppModel(path, threads=1, context=1024, parallel=2)
    yield model.listening_address + "/v1", model._api_key
    model.close()


async def test_streams_from_a_compatible_server(endpoint: tuple[str, str]) -> None:
    url, key = endpoint
    llm = OpenAIChatModel(url, "tiny", key, extra_body=NEVER_STOP)
    pieces = [p async for p in llm.stream(user_messages("hello"), max_tokens=10, temperature=0.5)]
    assert pieces and all(pieces)
    await llm.aclose()


async def test_early_close_closes_the_http_stream(endpoint: tuple[str, str]) -> None:
    url, key = endpoint
    llm = OpenAIChatModel(url, "tiny", key, extra_body=NEVER_STOP)
    it = llm.stream(user_messages("hello"), max_tokens=5000, temperature=1.0)
    assert await anext(it)
    await it.aclose()
    # The server is free again: a new short request completes promptly.
    assert [p async for p in llm.stream(user_messages("hi"), max_tokens=3, temperature=0.0)]
    await llm.aclose()


async def test_wrong_key_is_an_engine_error(endpoint: tuple[str, str]) -> None:
    url, _ = endpoint
    llm = OpenAIChatModel(url, "tiny", "wrong-key")
    with pytest.raises(EngineError, match="HTTP 401"):
        async for _ in llm.stream(user_messages("hello"), max_tokens=3, temperature=0.0):
            pass


async def test_unreachable_endpoint_is_an_engine_error(tmp_path: Path) -> None:
    from tests.conftest import free_port

    llm = OpenAIChatModel(f"http://127.0.0.1:{free_port()}/v1", "m", timeout=3)
    with pytest.raises(EngineError, match="unreachable"):
        async for _ in llm.stream(user_messages("hello"), max_tokens=3, temperature=0.0):
            pass
