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
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive

from voicebot.config import Settings
from voicebot.core import events as ev
from voicebot.core.types import (
    ChatMessage,
    LlmPiece,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)
from voicebot.engines.base import LanguageModel
from voicebot.errors import EngineError, HttpError, ProtocolError
from voicebot.session_config import check_tool_choice
from voicebot.transports.access import API, authorize
from voicebot.transports.event_stream import EventStreamResponse
from voicebot.transports.http_common import json_errors, read_model

DONE = b"data: [DONE]\n\n"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class FunctionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: ev.FunctionName
    arguments: str


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1, max_length=64)
    type: Literal["function"] = "function"
    function: FunctionIn


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def to_chat(self) -> ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ())
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role, text, calls if role == "assistant" else (), self.tool_call_id)


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: ev.FunctionName
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: ev.FunctionName


class ToolChoiceIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: NamedFunction


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
    tools: list[ToolIn] | None = Field(default=None, max_length=ev.MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceIn | None = None

    def offered(self) -> tuple[tuple[Tool, ...], ToolChoice]:
        """The tools and the choice, checked (a forced function must be among the tools)."""
        tools = tuple(Tool(t.function.name, t.function.description or "", t.function.parameters)
                      for t in self.tools or ())
        choice = self.tool_choice or "auto"
        name = choice if isinstance(choice, str) else choice.function.name
        try:
            check_tool_choice(tools, name, "tool_choice", event_id=None)  # the Realtime session's rules
        except ProtocolError as exc:
            raise HttpError(400, exc.message, exc.code, param=exc.param) from None
        return tools, name

    def check_history(self) -> None:
        """Every tool message answers a call made earlier in the messages."""
        made: set[str] = set()
        for i, m in enumerate(self.messages):
            made.update(c.id for c in m.tool_calls or ())
            if m.role == "tool" and m.tool_call_id not in made:
                raise HttpError(400, f"messages[{i}] is a tool message whose tool_call_id "
                                f"{m.tool_call_id!r} answers no earlier tool call.", "invalid_value",
                                param=f"messages.{i}.tool_call_id")
            for c in m.tool_calls or ():
                try:
                    ev.arguments_object(c.function.arguments, param=f"messages.{i}.tool_calls.arguments",
                                        event_id=None)
                except ProtocolError as exc:
                    raise HttpError(400, exc.message, "invalid_value", param=exc.param) from None


class _Chunks:
    """Pre-encoded ``chat.completion.chunk`` frames: per token only the piece is JSON-encoded."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.head = (f'data: {{"id":"{completion_id}","object":"chat.completion.chunk","created":{created},'
                     f'"model":{json.dumps(model)},"system_fingerprint":null,"choices":[{{"index":0,"delta":')
        self.usage_head = self.head.split('"choices"')[0]

    def delta(self, piece: str) -> bytes:
        return f'{self.head}{{"content":{json.dumps(piece)}}},"logprobs":null,"finish_reason":null}}]}}\n\n'.encode()

    def tool_call(self, d: ToolCallDelta) -> bytes:
        call: dict[str, Any] = {"index": d.index}
        if d.call_id is not None or d.name is not None:  # the call's first piece
            call.update(id=d.call_id, type="function")
        function = {"arguments": d.arguments} | ({"name": d.name} if d.name is not None else {})
        call["function"] = function
        return (f'{self.head}{{"tool_calls":[{json.dumps(call)}]}},"logprobs":null,'
                f'"finish_reason":null}}]}}\n\n').encode()

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


@dataclass(frozen=True, slots=True)
class Generation:
    """What one completion asks of the LLM."""

    messages: Sequence[ChatMessage]
    max_tokens: int
    temperature: float
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "auto"

    def stream(self, llm: LanguageModel) -> AsyncGenerator[LlmPiece, None]:
        return llm.stream(self.messages, max_tokens=self.max_tokens, temperature=self.temperature,
                          tools=self.tools, tool_choice=self.tool_choice)


def _finish_reason(tokens: int, max_tokens: int, called: bool) -> str:
    return "tool_calls" if called else "length" if tokens >= max_tokens else "stop"


async def _stream(llm: LanguageModel, gen: Generation, chunks: _Chunks, include_usage: bool,
                  in_flight: contextlib.AbstractContextManager[None]) -> AsyncGenerator[bytes, None]:
    stream = gen.stream(llm)
    max_tokens = gen.max_tokens
    tokens = 0
    called = False
    # Closed when the client leaves (the response cancels us) or we are done: the LLM stops now.
    with in_flight:
        async with contextlib.aclosing(stream):
            # The role chunk leaves with the first token (one write instead of two on the TTFT path);
            # headers are already out, so a client still sees the response start at once.
            head = chunks.role()
            try:
                async for piece in stream:
                    tokens += 1
                    if isinstance(piece, ToolCallDelta):
                        called = True
                        yield head + chunks.tool_call(piece)
                    else:
                        yield head + chunks.delta(piece)
                    head = b""
            except EngineError as err:
                # Headers are gone already: report in-band, the way the hosted API does (SDKs raise it).
                yield f"data: {json.dumps(_engine_failure(err).body())}\n\n".encode()
                return
            yield head + chunks.finish(_finish_reason(tokens, max_tokens, called))
            if include_usage:
                yield chunks.usage(tokens)
            yield DONE


def _engine_failure(err: EngineError) -> HttpError:
    return HttpError(502, str(err), "engine_error", type="server_error")


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _collect(llm: LanguageModel, gen: Generation) -> list[LlmPiece]:
    async with contextlib.aclosing(gen.stream(llm)) as stream:
        return [piece async for piece in stream]


def assemble_calls(pieces: Sequence[LlmPiece]) -> list[dict[str, Any]]:
    """The streamed pieces of tool calls as the message's ``tool_calls``, in the model's order."""
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        if isinstance(piece, ToolCallDelta):
            call = calls.setdefault(piece.index, {"id": piece.call_id or ev.new_id("call"), "type": "function",
                                                  "function": {"name": piece.name or "", "arguments": ""}})
            call["function"]["arguments"] += piece.arguments
    return list(calls.values())


async def _complete(request: Request, llm: LanguageModel, gen: Generation) -> list[LlmPiece] | None:
    """The whole reply, or None if the client went away first (generation is then stopped)."""
    loop = asyncio.get_running_loop()
    work = loop.create_task(_collect(llm, gen))
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
    state = await authorize(request, API)
    body = await read_model(request, ChatRequest, state.settings.max_text_bytes)
    max_tokens, temperature = _limits(state.settings, body)
    tools, tool_choice = body.offered()
    body.check_history()
    gen = Generation([m.to_chat() for m in body.messages], max_tokens, temperature, tools, tool_choice)
    llm = state.engines.llm
    completion_id = ev.new_id("chatcmpl")
    created = int(time.time())
    if body.stream:
        chunks = _Chunks(completion_id, created, body.model)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return EventStreamResponse(_stream(llm, gen, chunks, include_usage, state.generating()))
    try:
        with state.generating():
            pieces = await _complete(request, llm, gen)
    except EngineError as err:
        raise _engine_failure(err) from None
    if pieces is None:
        return Response(status_code=499)  # nobody is listening; uvicorn drops it
    text = "".join(p for p in pieces if isinstance(p, str))
    calls = assemble_calls(pieces)
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
    if calls:
        message["tool_calls"] = calls
    usage = {"prompt_tokens": 0, "completion_tokens": len(pieces), "total_tokens": len(pieces)}
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": created, "model": body.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": _finish_reason(len(pieces), max_tokens, bool(calls))}],
        "usage": usage,
    })


@json_errors
async def list_models(request: Request) -> Response:
    state = await authorize(request, API)
    model: dict[str, Any] = {"id": state.engines.llm.name, "object": "model", "created": int(state.started_at),
                             "owned_by": "voicebot"}
    return JSONResponse({"object": "list", "data": [model]})


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
