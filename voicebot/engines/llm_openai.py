"""A remote LLM behind any OpenAI-compatible chat endpoint (llama-server, vLLM, Ollama, OpenAI).

Streaming over HTTP: closing our iterator closes the response stream, which is how such
servers learn to stop generating (they abort the request when the client disconnects).
Client errors become :class:`~voicebot.errors.EngineError` with a message naming the endpoint,
so the session can report a protocol ``error`` event instead of a traceback.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import openai
from openai import AsyncOpenAI

from voicebot.core.types import TOOL_CHOICE_MODES, ChatMessage, LlmPiece, Tool, ToolCallDelta, ToolChoice
from voicebot.errors import EngineError

#: A loopback or LAN server that does not accept within this is down, not slow.
CONNECT_TIMEOUT_S = 5.0


class OpenAIChatModel:
    """Implements :class:`voicebot.engines.base.LanguageModel` with the official AsyncOpenAI client."""

    def __init__(self, base_url: str, model: str, api_key: str = "", *, timeout: float = 30.0,
                 retries: int = 2, extra_body: Mapping[str, Any] | None = None) -> None:
        """``extra_body``: server-specific request fields (e.g. llama-server's ``ignore_eos``, vLLM's
        ``top_k``) sent with every request, the way the ``openai`` client's ``extra_body`` does.

        ``timeout`` bounds each read (the wait for the response and each chunk); connecting gets
        at most ``CONNECT_TIMEOUT_S``. ``retries``: the client's own retries with exponential
        backoff, on connection errors, timeouts, HTTP 408/409/429 and 5xx — before the stream
        starts only, so a retry never repeats words already spoken."""
        self.base_url = base_url
        self._extra_body = dict(extra_body or {})
        self.name = model or "default"
        self.waiting = 0  # the server queues requests on its side
        self._model = model or "default"
        # The client requires a key; local servers ignore it.
        self._client = AsyncOpenAI(
            base_url=base_url, api_key=api_key or "none",
            timeout=openai.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)), max_retries=max(0, retries),
        )

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float,
        tools: Sequence[Tool] = (), tool_choice: ToolChoice = "auto",
    ) -> AsyncGenerator[LlmPiece, None]:
        payload: list[Any] = [m.to_openai() for m in messages]
        offered: dict[str, Any] = {}
        if tools:  # passed through as they are; the server's own parser and grammar apply
            choice: Any = tool_choice if tool_choice in TOOL_CHOICE_MODES else {
                "type": "function", "function": {"name": tool_choice}}
            offered = {"tools": [t.to_openai() for t in tools], "tool_choice": choice}
        try:
            response = await self._client.chat.completions.create(
                model=self._model,
                messages=payload,
                max_tokens=max_tokens,
                temperature=temperature,
                stream=True,
                extra_body=self._extra_body or None,
                **offered,
            )
        except openai.OpenAIError as exc:
            raise EngineError(self._describe(exc)) from exc
        try:
            async for chunk in response:
                for part in chunk.choices:
                    delta = part.delta
                    if delta is None:
                        continue
                    if delta.content:
                        yield delta.content
                    for call in delta.tool_calls or ():
                        function = call.function
                        yield ToolCallDelta(call.index, call.id or None, function.name if function else None,
                                            (function.arguments if function else None) or "")
        except openai.OpenAIError as exc:
            raise EngineError(self._describe(exc)) from exc
        finally:
            await response.close()  # drops the HTTP stream: the server stops generating

    async def prefill(self, messages: Sequence[ChatMessage], tools: Sequence[Tool] = ()) -> None:
        """Nothing to warm here: a remote server keeps its own prompt cache."""

    def _describe(self, exc: openai.OpenAIError) -> str:
        if isinstance(exc, openai.APIStatusError):
            return f"LLM endpoint {self.base_url} answered HTTP {exc.status_code}: {exc.message}"
        if isinstance(exc, openai.APITimeoutError):
            return f"the LLM server at {self.base_url} timed out"
        if isinstance(exc, openai.APIConnectionError):
            return f"the LLM server at {self.base_url} is unreachable: {exc}"
        return f"LLM endpoint {self.base_url} failed: {exc}"

    async def aclose(self) -> None:
        await self._client.close()
