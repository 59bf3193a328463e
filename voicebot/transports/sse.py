"""Text over Server-Sent Events: the conversation HTTP API and its resumable event stream.

Routes (all under the same API keys as the WebSocket; see docs/protocol.md "Text over SSE"):

* ``POST /v1/conversations`` — create (optional ``instructions``)
* ``GET /v1/conversations/{id}`` — history (+ ``last_event_id`` to resume the stream from)
* ``POST /v1/conversations/{id}/messages`` — ``{"text": …}``: a user message, and a reply
* ``POST /v1/conversations/{id}/token`` — a short-lived token for an EventSource URL
* ``GET|POST /v1/conversations/{id}/events`` — the event stream (``Last-Event-ID`` header,
  ``last_event_id`` query or body field to resume)

The stream is written by :class:`EventStreamResponse`, a small ASGI response rather than
starlette's StreamingResponse or sse-starlette: it watches for the client's disconnect itself and
cancels the writer at once (a dropped chat completion must stop the LLM at once), and costs one
extra task per stream (10,000 idle streams are a benchmark target).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from voicebot.auth import bearer
from voicebot.conversations import ConversationHub, ConversationLimitError, SharedConversation
from voicebot.core.sse import HEARTBEAT, parse_last_event_id, retry_frame
from voicebot.errors import ProtocolError
from voicebot.transports.http_common import HttpError, app_state, read_model, require_api_key

if TYPE_CHECKING:
    from voicebot.server import AppState

log = logging.getLogger(__name__)

HUB_KEY = "conversation_hub"
SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx would otherwise buffer the stream
}


class EventStreamResponse(Response):
    """Writes an async iterator of SSE bytes; a client disconnect cancels it at once.

    Closing the iterator (``aclose``) runs its ``finally`` blocks, which is where the producers
    stop: the conversation listener unsubscribes, the chat completion closes the LLM stream.
    """

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], status_code: int = 200) -> None:
        super().__init__(None, status_code, headers=SSE_HEADERS, media_type=self.media_type)
        # A stream has no length: chunked transfer encoding, like StreamingResponse.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.body_iter = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"gone": False, "done": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            state["gone"] = True
            if not state["done"]:
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iter:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            state["done"] = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()  # our own cancellation: the client left, the response is over
        except OSError:  # the socket broke under a write
            pass
        finally:
            state["done"] = True
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            aclose = getattr(self.body_iter, "aclose", None)
            if aclose is not None:
                await aclose()


def hub_of(state: AppState) -> ConversationHub:
    hub = state.extras.get(HUB_KEY)
    if hub is None:
        hub = ConversationHub(state.settings, state.engines, state.conversations)
        state.extras[HUB_KEY] = hub
    assert isinstance(hub, ConversationHub)
    return hub


def _conversation(request: Request) -> SharedConversation:
    conversation_id = request.path_params["conversation_id"]
    shared = hub_of(app_state(request)).get(conversation_id)
    if shared is None:
        raise HttpError(404, f"Conversation '{conversation_id}' does not exist.", "conversation_not_found",
                        "conversation_id")
    return shared


def token_scope(conversation_id: str) -> str:
    return f"conversation:{conversation_id}"


def _require_stream_access(request: Request, conversation_id: str) -> None:
    """A key in the header, or a token (scoped to this conversation) in the query."""
    state = app_state(request)
    if not state.auth.required:
        return
    key = bearer(request.headers)
    if key is not None:
        if state.auth.accepts(key):
            return
        raise HttpError(401, "Incorrect API key provided.", "invalid_api_key")
    token = request.query_params.get("token")
    if token is None:
        raise HttpError(401, "Missing API key: send Authorization: Bearer, or ?token= minted with "
                        f"POST /v1/conversations/{conversation_id}/token.", "invalid_api_key")
    if not state.auth.tokens.valid(token, scope=token_scope(conversation_id)):
        raise HttpError(401, "The token is invalid or expired; mint a new one.", "invalid_token")


def _guard(handler: Any) -> Any:
    async def wrapped(request: Request) -> Response:
        try:
            response: Response = await handler(request)
            return response
        except HttpError as err:
            return err.response()

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


# --- request bodies ---------------------------------------------------------------------------------


class CreateConversation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    instructions: str | None = None


class PostMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str = Field(min_length=1)


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    last_event_id: str | int | None = None


# --- endpoints --------------------------------------------------------------------------------------


@_guard
async def create_conversation(request: Request) -> Response:
    require_api_key(request)
    state = app_state(request)
    body = await read_model(request, CreateConversation, state.settings.max_text_bytes, empty_ok=True)
    try:
        shared = hub_of(state).create(body.instructions)
    except ConversationLimitError as err:
        raise HttpError(429, str(err), "too_many_conversations") from None
    return JSONResponse(shared.to_wire(), status_code=201)


@_guard
async def get_conversation(request: Request) -> Response:
    require_api_key(request)
    return JSONResponse(_conversation(request).to_wire(with_items=True))


@_guard
async def post_message(request: Request) -> Response:
    require_api_key(request)
    shared = _conversation(request)
    state = app_state(request)
    body = await read_model(request, PostMessage, state.settings.max_text_bytes)
    if len(body.text.encode()) > state.settings.max_text_bytes:
        raise HttpError(413, "The message text is too long.", "text_too_large", "text")
    try:
        item = await shared.post_text(body.text)
    except ProtocolError as err:
        raise HttpError(400, err.message, err.code, err.param) from None
    return JSONResponse({"object": "conversation.message", "conversation_id": shared.id, "item": item},
                        status_code=202)


@_guard
async def mint_token(request: Request) -> Response:
    """Only a real API key mints: a leaked URL token must not be able to renew itself."""
    state = app_state(request)
    key = bearer(request.headers)
    if state.auth.required and not state.auth.is_api_key(key):
        raise HttpError(401, "Missing API key." if key is None else "Incorrect API key provided.",
                        "invalid_api_key")
    shared = _conversation(request)
    token, expires_at = state.auth.tokens.mint(state.settings.sse_token_ttl_s, scope=token_scope(shared.id))
    return JSONResponse({"token": token, "expires_at": int(expires_at), "conversation_id": shared.id})


@_guard
async def stream_events(request: Request) -> Response:
    shared = _conversation(request)
    _require_stream_access(request, shared.id)
    state = app_state(request)
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
                        heartbeat_s: float) -> AsyncIterator[bytes]:
    # Subscribing inside the generator: a response that never starts never leaves a listener behind.
    sub = shared.subscribe(last_event_id)
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


async def close_hub(state: AppState) -> None:
    """Server shutdown: end every stream and every responder task."""
    hub = state.extras.pop(HUB_KEY, None)
    if isinstance(hub, ConversationHub):
        await hub.close()
