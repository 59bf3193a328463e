"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models`` on the configured LLM.

Stateless: the client sends the whole history each time (use ``/v1/conversations`` for a history
shared with voice). ``stream: true`` answers ``text/event-stream`` with ``chat.completion.chunk``
events and ``data: [DONE]``; a client that goes away mid-stream (or mid-request, non-streaming)
closes the LLM iterator at once, which stops generation within one token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive

from voicebot.config import Settings
from voicebot.core import events as ev
from voicebot.core.types import ChatMessage
from voicebot.engines.base import LanguageModel
from voicebot.errors import EngineError, HttpError
from voicebot.transports.access import API, authorize
from voicebot.transports.event_stream import EventStreamResponse
from voicebot.transports.http_common import json_errors, read_model

DONE = b"data: [DONE]\n\n"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def to_chat(self) -> ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return ChatMessage("system" if self.role == "developer" else self.role, text)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = "voicebot"
    messages: list[MessageIn] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    n: int = Field(default=1, ge=1, le=1)
    stream_options: StreamOptions | None = None


class _Chunks:
    """Pre-encoded ``chat.completion.chunk`` frames: per token only the piece is JSON-encoded."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.head = (f'data: {{"id":"{completion_id}","object":"chat.completion.chunk","created":{created},'
                     f'"model":{json.dumps(model)},"system_fingerprint":null,"choices":[{{"index":0,"delta":')
        self.usage_head = self.head.split('"choices"')[0]

    def delta(self, piece: str) -> bytes:
        return f'{self.head}{{"content":{json.dumps(piece)}}},"logprobs":null,"finish_reason":null}}]}}\n\n'.encode()

    def role(self) -> bytes:
        return (f'{self.head}{{"role":"assistant","content":""}},"logprobs":null,'
                f'"finish_reason":null}}]}}\n\n').encode()

    def finish(self, reason: str) -> bytes:
        return f'{self.head}{{}},"logprobs":null,"finish_reason":"{reason}"}}]}}\n\n'.encode()

    def usage(self, completion_tokens: int) -> bytes:
        usage = {"prompt_tokens": 0, "completion_tokens": completion_tokens, "total_tokens": completion_tokens}
        return f'{self.usage_head}"choices":[],"usage":{json.dumps(usage)}}}\n\n'.encode()


def _limits(settings: Settings, body: ChatRequest) -> tuple[int, float]:
    asked = body.max_completion_tokens or body.max_tokens or settings.max_response_tokens
    temperature = settings.temperature if body.temperature is None else body.temperature
    return min(asked, settings.max_response_tokens), temperature


async def _stream(llm: LanguageModel, messages: Sequence[ChatMessage], max_tokens: int, temperature: float,
                  chunks: _Chunks, include_usage: bool,
                  in_flight: contextlib.AbstractContextManager[None]) -> AsyncGenerator[bytes, None]:
    stream = llm.stream(messages, max_tokens=max_tokens, temperature=temperature)
    tokens = 0
    # Closed when the client leaves (the response cancels us) or we are done: the LLM stops now.
    with in_flight:
        async with contextlib.aclosing(stream):
            # The role chunk leaves with the first token (one write instead of two on the TTFT path);
            # headers are already out, so a client still sees the response start at once.
            head = chunks.role()
            try:
                async for piece in stream:
                    tokens += 1
                    yield head + chunks.delta(piece)
                    head = b""
            except EngineError as err:
                # Headers are gone already: report in-band, the way the hosted API does (SDKs raise it).
                yield f"data: {json.dumps(_engine_failure(err).body())}\n\n".encode()
                return
            yield head + chunks.finish("length" if tokens >= max_tokens else "stop")
            if include_usage:
                yield chunks.usage(tokens)
            yield DONE


def _engine_failure(err: EngineError) -> HttpError:
    return HttpError(502, str(err), "engine_error", type="server_error")


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _collect(llm: LanguageModel, messages: Sequence[ChatMessage], max_tokens: int,
                   temperature: float) -> list[str]:
    async with contextlib.aclosing(llm.stream(messages, max_tokens=max_tokens, temperature=temperature)) as stream:
        return [piece async for piece in stream]


async def _complete(request: Request, llm: LanguageModel, messages: Sequence[ChatMessage], max_tokens: int,
                    temperature: float) -> list[str] | None:
    """The whole reply, or None if the client went away first (generation is then stopped)."""
    loop = asyncio.get_running_loop()
    work = loop.create_task(_collect(llm, messages, max_tokens, temperature))
    gone = loop.create_task(_until_disconnect(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, gone):
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
    if not work.done() or work.cancelled():
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return None
    return work.result()


@json_errors
async def chat_completions(request: Request) -> Response:
    state = authorize(request, API)
    body = await read_model(request, ChatRequest, state.settings.max_text_bytes)
    max_tokens, temperature = _limits(state.settings, body)
    messages = [m.to_chat() for m in body.messages]
    llm = state.engines.llm
    completion_id = ev.new_id("chatcmpl")
    created = int(time.time())
    if body.stream:
        chunks = _Chunks(completion_id, created, body.model)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return EventStreamResponse(_stream(llm, messages, max_tokens, temperature, chunks, include_usage,
                                           state.generating()))
    try:
        with state.generating():
            pieces = await _complete(request, llm, messages, max_tokens, temperature)
    except EngineError as err:
        raise _engine_failure(err) from None
    if pieces is None:
        return Response(status_code=499)  # nobody is listening; uvicorn drops it
    text = "".join(pieces)
    usage = {"prompt_tokens": 0, "completion_tokens": len(pieces), "total_tokens": len(pieces)}
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": created, "model": body.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": "length" if len(pieces) >= max_tokens else "stop"}],
        "usage": usage,
    })


@json_errors
async def list_models(request: Request) -> Response:
    state = authorize(request, API)
    model: dict[str, Any] = {"id": state.engines.llm.name, "object": "model", "created": int(state.started_at),
                             "owned_by": "voicebot"}
    return JSONResponse({"object": "list", "data": [model]})


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
