"""Text over Server-Sent Events: the conversation HTTP API and its resumable event stream.

Routes (all under the same API keys as the WebSocket; see docs/protocol.md "Text over SSE"):

* ``POST /v1/conversations`` — create (optional ``instructions``)
* ``GET /v1/conversations/{id}`` — history (+ ``last_event_id`` to resume the stream from)
* ``POST /v1/conversations/{id}/messages`` — ``{"text": …}``: a user message, and a reply; or
  ``{"type": "function_call_output", "call_id": …, "output": …}``: the result of a function call
  the model made (``tool.call`` on the stream), and a reply once every call made with it has one
* ``POST /v1/conversations/{id}/token`` — a short-lived token for an EventSource URL
* ``GET|POST /v1/conversations/{id}/events`` — the event stream (``Last-Event-ID`` header,
  ``last_event_id`` query or body field to resume)

The stream is written by :class:`~voicebot.transports.event_stream.EventStreamResponse`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from voicebot.auth import bearer
from voicebot.conversations import SharedConversation
from voicebot.core.sse import HEARTBEAT, parse_last_event_id, retry_frame
from voicebot.errors import HttpError, ProtocolError
from voicebot.transports.access import API, API_KEY_ONLY, EVENT_STREAM, authorize, mint
from voicebot.transports.event_stream import EventStreamResponse
from voicebot.transports.http_common import json_errors, read_model


def token_scope(conversation_id: str) -> str:
    return f"conversation:{conversation_id}"


def _conversation_id(request: Request) -> str:
    return str(request.path_params["conversation_id"])

# --- request bodies ---------------------------------------------------------------------------------


class CreateConversation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    instructions: str | None = None


class PostMessage(BaseModel):
    """A user text message (``text``), or a function call's result (``type: "function_call_output"``,
    ``call_id``, ``output``: JSON or plain text, as on the Realtime API)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["message", "function_call_output"] = "message"
    text: str | None = Field(default=None, min_length=1)
    call_id: str | None = Field(default=None, min_length=1, max_length=64)
    output: str | None = None


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    last_event_id: str | int | None = None


# --- endpoints --------------------------------------------------------------------------------------


@json_errors
async def create_conversation(request: Request) -> Response:
    state = await authorize(request, API)
    body = await read_model(request, CreateConversation, state.settings.max_text_bytes, empty_ok=True)
    shared = await state.hub.new(body.instructions)
    return JSONResponse(shared.to_wire(), status_code=201)


@json_errors
async def get_conversation(request: Request) -> Response:
    state = await authorize(request, API)
    return JSONResponse((await state.hub.open(_conversation_id(request))).to_wire(with_items=True))


@json_errors
async def post_message(request: Request) -> Response:
    state = await authorize(request, API)
    shared = await state.hub.open(_conversation_id(request))
    body = await read_model(request, PostMessage, state.settings.max_text_bytes)
    call = body.type == "function_call_output"
    needed = ("call_id", "output") if call else ("text",)
    missing = next((name for name in needed if getattr(body, name) is None), None)
    if missing is not None:
        raise HttpError(400, f"Missing required parameter '{missing}' (a {body.type} needs {' and '.join(needed)}).",
                        "missing_required_parameter", missing)
    field = needed[-1]  # the text the item keeps: the message's, or the function's result
    text = str(getattr(body, field))
    if len(text.encode()) > state.settings.max_text_bytes:
        raise HttpError(413, f"The {'message text' if field == 'text' else field} is too long.", "text_too_large",
                        field)
    try:
        item = shared.post_function_output(str(body.call_id), text) if call else shared.post_text(text)
    except ProtocolError as err:  # e.g. item_too_large: more text than --max-conversation-bytes
        # The Session names the Realtime item's fields ("item.call_id"); this body has them at the top.
        param = err.param.removeprefix("item.") if err.param else None
        raise HttpError(413 if err.code == "item_too_large" else 400, err.message, err.code,
                        field if param == "content" else param) from None
    return JSONResponse({"object": "conversation.message", "conversation_id": shared.id, "item": item},
                        status_code=202)


@json_errors
async def mint_token(request: Request) -> Response:
    """Only a real API key mints: a leaked URL token must not be able to renew itself."""
    state = await authorize(request, API_KEY_ONLY)
    shared = await state.hub.open(_conversation_id(request))
    token, expires_at = await mint(state, state.settings.sse_token_ttl_s, scope=token_scope(shared.id),
                                   owner=state.auth.owner(bearer(request.headers)))
    return JSONResponse({"token": token, "expires_at": int(expires_at), "conversation_id": shared.id})


@json_errors
async def stream_events(request: Request) -> Response:
    conversation_id = _conversation_id(request)
    state = await authorize(request, EVENT_STREAM, token_scope=token_scope(conversation_id))
    shared = await state.hub.open(conversation_id)
    raw = request.headers.get("last-event-id")  # a reconnecting browser sends the newest id here
    if raw is None:
        raw = request.query_params.get("last_event_id")
    if request.method == "POST":
        body = await read_model(request, StreamRequest, state.settings.max_text_bytes, empty_ok=True)
        if raw is None and body.last_event_id is not None:
            raw = str(body.last_event_id)
    return EventStreamResponse(_event_stream(shared, parse_last_event_id(raw), state.settings.sse_retry_ms,
                                             state.settings.sse_heartbeat_s))


async def _event_stream(shared: SharedConversation, last_event_id: int | None, retry_ms: int,
                        heartbeat_s: float) -> AsyncGenerator[bytes, None]:
    # Subscribing inside the generator: a response that never starts never leaves a listener behind.
    sub = await shared.listen(last_event_id)
    listener = sub.listener
    try:
        first = retry_frame(retry_ms)
        if sub.reset is not None:
            first += sub.reset
        yield first + b"".join(entry.frame for entry in sub.backlog)
        while True:
            if not listener.pending and not listener.closed:
                try:
                    async with asyncio.timeout(heartbeat_s):
                        await listener.wake.wait()
                except TimeoutError:
                    yield HEARTBEAT
                    continue
            entries = listener.take()
            if entries:
                # Everything queued goes out in one write: a burst of deltas costs one syscall.
                yield b"".join(entry.frame for entry in entries)
            if listener.closed:
                if listener.farewell is not None:
                    yield listener.farewell
                return
    finally:
        shared.unsubscribe(listener)


routes = [
    Route("/v1/conversations", create_conversation, methods=["POST"]),
    Route("/v1/conversations/{conversation_id}", get_conversation, methods=["GET"]),
    Route("/v1/conversations/{conversation_id}/messages", post_message, methods=["POST"]),
    Route("/v1/conversations/{conversation_id}/token", mint_token, methods=["POST"]),
    Route("/v1/conversations/{conversation_id}/events", stream_events, methods=["GET", "POST"]),
]

