"""``/v1/realtime``: the OpenAI Realtime protocol over a WebSocket. Translation only.

Auth and Origin are checked before the handshake completes (a refused client gets an HTTP 401/403
with a JSON message, not an open socket). Then one reader (client events -> Session) and one
writer (Session events -> socket) run until either side goes away; the Session is closed in
``finally`` so no task of it outlives the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from voicebot.auth import bearer, origin_allowed, subprotocol_key
from voicebot.core import events as ev
from voicebot.errors import ProtocolError
from voicebot.session import Session

if TYPE_CHECKING:
    from voicebot.server import AppState

log = logging.getLogger(__name__)

#: A client that stops reading is disconnected rather than buffered without bound. Output is
#: paced at real time, so a healthy client never comes near this.
MAX_OUTBOX_EVENTS = 5000


def _refusal(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"type": "invalid_request_error", "code": code, "message": message}},
                        status_code=status)


async def refuse(websocket: WebSocket, status: int, message: str, code: str) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(_refusal(status, message, code))
    else:  # servers without the denial extension: the client sees a 403 handshake failure
        await websocket.close(code=1008, reason=message[:120])


async def realtime_endpoint(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.voicebot
    settings = state.settings
    subprotocols = websocket.scope.get("subprotocols", [])
    if not origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host"),
                          settings.allowed_origins):
        await refuse(websocket, 403, "This Origin is not allowed to connect.", "origin_not_allowed")
        return
    key = bearer(websocket.headers) or subprotocol_key(subprotocols)
    if not state.auth.accepts(key):
        message = "Missing API key." if key is None else "Incorrect API key provided."
        await refuse(websocket, 401, message, "invalid_api_key")
        return
    conversation = None
    conversation_id = websocket.query_params.get("conversation")
    if conversation_id:
        conversation = state.conversations.get(conversation_id) if state.conversations else None
        if conversation is None:
            await refuse(websocket, 404, f"Conversation '{conversation_id}' does not exist.",
                         "conversation_not_found")
            return
    await websocket.accept(subprotocol="realtime" if "realtime" in subprotocols else None)

    outbox: asyncio.Queue[ev.ServerEvent | None] = asyncio.Queue()
    session = Session(state.engines, settings, outbox.put_nowait, conversation=conversation,
                      model=websocket.query_params.get("model") or "voicebot")
    state.sessions.add(session)
    writer = asyncio.create_task(_write(websocket, outbox), name=f"{session.id}:writer")
    try:
        session.start()
        await _read(websocket, session, outbox, settings.max_message_bytes, writer)
    finally:
        await session.close()
        state.sessions.discard(session)
        outbox.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, timeout=2)
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer


async def _read(websocket: WebSocket, session: Session, outbox: asyncio.Queue[ev.ServerEvent | None],
                limit: int, writer: asyncio.Task[None]) -> None:
    while not writer.done():
        try:
            message = await websocket.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        text, data = message.get("text"), message.get("bytes")
        raw = text if text is not None else data
        if raw is None:
            continue
        if len(raw) > limit:
            session.emit(ev.error_event(ProtocolError(
                f"Message of {len(raw)} bytes exceeds the {limit} byte limit.", code="message_too_large")))
            continue
        if text is None:
            session.emit(ev.error_event(ProtocolError(
                "Binary frames are not supported: send JSON text events.", code="invalid_message")))
            continue
        await session.handle_raw(text)
        if outbox.qsize() > MAX_OUTBOX_EVENTS:
            log.warning("session %s: client is not reading; closing", session.id)
            await websocket.close(code=1008, reason="client too slow")
            return


async def _write(websocket: WebSocket, outbox: asyncio.Queue[ev.ServerEvent | None]) -> None:
    while (event := await outbox.get()) is not None:
        try:
            await websocket.send_text(ev.dumps(event))
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
