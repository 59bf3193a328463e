"""``/v1/realtime``: the OpenAI Realtime protocol over a WebSocket. Translation only.

Auth and Origin are checked before the handshake completes (a refused client gets an HTTP 401/403
with a JSON message, not an open socket). Then one reader (client messages -> Session) and one
writer (the sink's outbox -> socket) run until either side goes away; the Session is closed in
``finally`` so no task of it outlives the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from starlette.websockets import WebSocket, WebSocketDisconnect

from voicebot.core import events as ev
from voicebot.core.audio import AudioFormat
from voicebot.errors import HttpError, ProtocolError
from voicebot.session import Session
from voicebot.sink import AudioChunk
from voicebot.transports.access import BROWSER, authorize, refuse, session_owner

log = logging.getLogger(__name__)

#: A client that stops reading is disconnected rather than buffered without bound. Output is
#: paced at real time, so a healthy client never comes near this.
MAX_OUTBOX_EVENTS = 5000
#: Audio deltas are cut to this length: short enough that a cancel stops output almost at once,
#: long enough that per-event overhead stays negligible.
DELTA_MS = 100.0


class WebSocketSink:
    """The Realtime WebSocket's output: every event, audio as ``response.output_audio.delta``.

    Events wait in an outbox for the writer task. ``clear()`` drops the audio deltas still in it
    (the client drops what it buffered itself when it sees ``speech_started``); the server cannot
    know what a WebSocket client played, so ``playback_position`` is None and the session's
    playout clock estimates it (a client refines it with ``conversation.item.truncate``).
    """

    audio_format: AudioFormat | None = None  # the session's audio.output.format
    chunk_ms = DELTA_MS
    holds_output = False  # the client plays (and clears) its own buffer
    kind = "realtime_ws"

    def __init__(self) -> None:
        self.outbox: deque[ev.ServerEvent | AudioChunk] = deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.end_reason: str | None = None  # the session ended itself: close 1008 with this reason

    def send_event(self, event: ev.ServerEvent) -> None:
        self.outbox.append(event)
        self.wake.set()

    def send_audio(self, chunk: AudioChunk) -> None:
        self.outbox.append(chunk)
        self.wake.set()

    def end_audio(self, response_id: str, item_id: str) -> None:
        pass  # response.output_audio.done follows as an event

    def clear(self) -> None:
        kept = [e for e in self.outbox if not isinstance(e, AudioChunk)]
        self.outbox.clear()
        self.outbox.extend(kept)

    def playback_position(self, item_id: str) -> float | None:
        return None

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def end(self, reason: str) -> None:
        """A time limit ran out: the writer sends what is queued (the ``error`` event), then closes 1008."""
        self.end_reason = reason
        self.close()

    async def write(self, websocket: WebSocket) -> None:
        """The writer task: drain the outbox until closed (then flush what is left)."""
        while True:
            while self.outbox:
                entry = self.outbox.popleft()
                event = entry if not isinstance(entry, AudioChunk) else ev.audio_delta(
                    entry.response_id, entry.item_id, entry.encoded())
                try:
                    await websocket.send_text(ev.dumps(event))
                except (WebSocketDisconnect, RuntimeError, OSError):
                    return
            if self.closed:
                if self.end_reason is not None:
                    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                        await websocket.close(code=1008, reason=self.end_reason)
                return
            self.wake.clear()
            await self.wake.wait()


async def realtime_endpoint(websocket: WebSocket) -> None:
    try:
        state = authorize(websocket, BROWSER)
        owner = session_owner(websocket, state)
        state.admit_session(owner)
        conversation = state.resolve_conversation(websocket.query_params.get("conversation"))
    except HttpError as err:
        await refuse(websocket, err)
        return
    subprotocols = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol="realtime" if "realtime" in subprotocols else None)

    sink = WebSocketSink()
    session = Session(state.engines, state.settings, sink, conversation=conversation,
                      model=websocket.query_params.get("model") or "voicebot", metrics=state.metrics, owner=owner)
    state.sessions.add(session)
    writer = asyncio.create_task(sink.write(websocket), name=f"{session.id}:writer")
    try:
        session.start()
        await _read(websocket, session, sink, state.settings.max_message_bytes, writer)
    finally:
        await session.close()
        state.sessions.discard(session)
        sink.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, timeout=2)
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer


async def _read(websocket: WebSocket, session: Session, sink: WebSocketSink, limit: int,
                writer: asyncio.Task[None]) -> None:
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
        if len(sink.outbox) > MAX_OUTBOX_EVENTS:
            log.warning("session %s: client is not reading; closing", session.id)
            await websocket.close(code=1008, reason="client too slow")
            return
