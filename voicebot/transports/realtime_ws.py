"""``/v1/realtime``: the OpenAI Realtime protocol over a WebSocket. Translation only.

Auth and Origin are checked before the handshake completes (a refused client gets an HTTP 401/403
with a JSON message, not an open socket). Then one reader (client messages -> Session) and one
writer (the sink's bounded outbox -> socket) run until either side goes away, one of them fails
(logged with its traceback) or the outbox overflows (a client that is not reading: close 1008);
the Session is closed in ``finally`` so no task of it outlives the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from starlette.websockets import WebSocket, WebSocketDisconnect

from voicebot import logs
from voicebot.core import events as ev
from voicebot.core.audio import AudioFormat
from voicebot.core.conversation import Conversation
from voicebot.errors import HttpError, ProtocolError
from voicebot.session import Session
from voicebot.sink import AudioChunk
from voicebot.state import AppState
from voicebot.transports.access import BROWSER, authorize, refuse, session_owner

log = logging.getLogger(__name__)

#: The outbox's bound. A client that stops reading (its socket's buffers full, the writer stuck
#: in a send) is disconnected with close code 1008 "client is not reading" as soon as this many
#: events wait for it, instead of growing memory. Output is paced at real time and the writer
#: sends as fast as the socket takes it, so a healthy client never comes near this.
MAX_OUTBOX_EVENTS = 5000
SLOW_READER_CLOSE = (1008, "client is not reading")
#: Audio deltas are cut to this length: short enough that a cancel stops output almost at once,
#: long enough that per-event overhead stays negligible.
DELTA_MS = 100.0
#: The close code at shutdown: 1001 "going away" (RFC 6455), what browsers and the SDKs expect of a
#: server that leaves. No ``error`` event first (the hosted API sends none): the close reason says it.
GOING_AWAY = 1001
#: The close code when the session ended itself (session_expired, idle_timeout): 1008 policy violation.
POLICY_VIOLATION = 1008


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

    def __init__(self, max_outbox: int | None = None) -> None:
        self.outbox: deque[ev.ServerEvent | AudioChunk] = deque()
        self.wake = asyncio.Event()
        self.closed = False
        #: How the writer closes the socket once the outbox is sent: 1001 at shutdown, 1008 when the
        #: session ended itself (a time limit); None = the client went away, nothing to send.
        self.close_with: tuple[int, str] | None = None
        self.max_outbox = max_outbox or MAX_OUTBOX_EVENTS
        #: Set once the outbox is full: nothing more is queued, the connection is to be closed.
        self.overflowed = asyncio.Event()

    def send_event(self, event: ev.ServerEvent) -> None:
        self._put(event)

    def send_audio(self, chunk: AudioChunk) -> None:
        self._put(chunk)

    def _put(self, entry: ev.ServerEvent | AudioChunk) -> None:
        if self.overflowed.is_set():
            return  # the connection is being closed: the client will not see it anyway
        if len(self.outbox) >= self.max_outbox:
            self.overflowed.set()
            return
        self.outbox.append(entry)
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

    def go_away(self, reason: str) -> None:
        """Shutdown: send what is queued, then close the socket with 1001 (going away) and ``reason``."""
        self.close_with = (GOING_AWAY, reason)
        self.close()

    def end(self, reason: str) -> None:
        """A time limit ran out: the writer sends what is queued (the ``error`` event), then closes 1008."""
        self.close_with = (POLICY_VIOLATION, reason)
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
                if self.close_with is not None:  # the reader then sees the client's close and ends
                    code, reason = self.close_with
                    with contextlib.suppress(Exception):
                        await websocket.close(code=code, reason=reason)
                return
            self.wake.clear()
            await self.wake.wait()


async def realtime_endpoint(websocket: WebSocket) -> None:
    try:
        state = await authorize(websocket, BROWSER)
        owner = session_owner(websocket, state)
        conversation = await state.resolve_conversation(websocket.query_params.get("conversation"))
        seat = state.admit_session(owner)  # last: nothing after it can refuse
    except HttpError as err:
        await refuse(websocket, err)
        return
    try:
        await _serve(websocket, state, owner, conversation)
    finally:
        seat.release()


async def _serve(websocket: WebSocket, state: AppState, owner: str | None, conversation: Conversation | None) -> None:
    subprotocols = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol="realtime" if "realtime" in subprotocols else None)

    sink = WebSocketSink()
    session = Session(state.engines, state.settings, sink, conversation=conversation,
                      model=websocket.query_params.get("model") or "voicebot", metrics=state.metrics, owner=owner)
    state.sessions.add(session)
    state.sockets.add(sink)
    # Three owned tasks, all awaited here: whichever ends first ends the connection, with a reason.
    # They carry the session's log ids, so what the reader's events cause is logged with them.
    ids = logs.context(**session.log_ids)
    writer = asyncio.create_task(sink.write(websocket), name=f"{session.id}:writer", context=ids)
    reader = asyncio.create_task(_read(websocket, session, state.settings.max_message_bytes),
                                 name=f"{session.id}:reader", context=ids)
    overflow = asyncio.create_task(sink.overflowed.wait(), name=f"{session.id}:overflow")
    try:
        session.start()
        await asyncio.wait([reader, writer, overflow], return_when=asyncio.FIRST_COMPLETED)
        if overflow.done():
            code, reason = SLOW_READER_CLOSE
            log.warning("session %s: %d events wait for a client that is not reading; closing with %d",
                        session.id, len(sink.outbox), code)
            writer.cancel()  # it may be stuck in a send to the full socket
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await websocket.close(code=code, reason=reason)
        for task, role in ((reader, "reader"), (writer, "writer")):
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                log.error("session %s: the WebSocket %s failed; closing the connection", session.id, role,
                          exc_info=exc)
    finally:
        reader.cancel()
        overflow.cancel()
        await asyncio.gather(reader, overflow, return_exceptions=True)
        await session.close()
        state.sessions.discard(session)
        state.sockets.discard(sink)
        sink.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, timeout=2)
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer


async def _read(websocket: WebSocket, session: Session, limit: int) -> None:
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: the socket was closed under us
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
