"""``/telephony/{carrier}/media``: a carrier's media stream <-> one Session. Translation only.

The carrier (Twilio, Telnyx, Vonage — chosen by the path) only changes the serializer; this
bridge is the same for all of them:

* caller audio (μ-law/A-law 8 kHz or L16) goes to ``Session.feed_audio`` in the carrier's own
  format — the Session decodes and resamples it (band-limited, soxr) like any other client's;
* the bridge is the session's output sink with the carrier's format and 20 ms chunks, so the
  session's playout clock paces every frame (``--telephony-lead-ms`` ahead of real time);
  :class:`PhonePlayout` puts a mark after every 100 ms, and the carrier's mark echoes are the
  caller's playback clock (the sink's ``playback_position``);
* barge-in is the Session's, as on every transport: it cuts the history where the last
  acknowledged mark says, then the sink's ``clear()`` drops unsent frames and sends ``clear``;
* keypad digits become a user message the assistant answers (and may interrupt it first).

Bad frames are logged and skipped; only the end of the socket, a ``stop`` or the server's
shutdown ends the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voicebot.core import events as ev
from voicebot.core.audio import AudioFormat
from voicebot.core.conversation import Conversation
from voicebot.errors import HttpError, ProtocolError
from voicebot.session import Session
from voicebot.sink import AudioChunk
from voicebot.state import AppState
from voicebot.tasks import OwnedTasks
from voicebot.transports.access import CARRIER, app_state, authorize, refuse, session_owner
from voicebot.transports.carriers import CARRIERS
from voicebot.transports.carriers.base import (
    BadFrame,
    CarrierEvent,
    Dtmf,
    MarkAck,
    Media,
    Outbound,
    Serializer,
    Start,
    Stop,
)
from voicebot.transports.phone_playout import FRAME_MS, Frame, PhonePlayout
from voicebot.transports.twiml import public_url, twilio_voice, verify_twilio

log = logging.getLogger(__name__)

KIND = "telephony"
DTMF_GAP_S = 1.5  # digits typed within this gap are one entry ("1 2 3 4"); '#' ends it at once
_LOGGED_BAD_FRAMES = 20  # per call at WARNING; the rest at DEBUG (a broken peer must not flood the log)
#: Frames waiting to be sent are bounded: audio is paced at real time, so this many unsent (10 s)
#: means the carrier stopped reading (the writer is stuck in a send): the call ends, 1008.
MAX_UNSENT_FRAMES = 500


@dataclass
class CallStats:
    carrier: str
    call_id: str = ""
    conversation_id: str = ""
    started_at: float = field(default_factory=time.time)
    frames_in: int = 0
    frames_out: int = 0
    marks_acked: int = 0
    clears: int = 0
    #: (item id, ms of it the carrier had acknowledged as played) at each clear
    truncations: list[tuple[str, int]] = field(default_factory=list)
    dtmf: str = ""
    bad_frames: int = 0
    ended: str = ""


class CallBridge:
    """One call: the carrier's socket on one side, a Session on the other (whose sink it is)."""

    kind = KIND
    chunk_ms = float(FRAME_MS)
    holds_output = True

    def __init__(self, state: AppState, carrier: str, serializer: Serializer, websocket: WebSocket,
                 conversation: Conversation | None, owner: str | None = None) -> None:
        self.id = ev.new_id("tel")
        self.owner = owner  # the API key in the stream URL (fingerprint), for --max-sessions-per-key
        self.state = state
        self.settings = state.settings
        self.serializer = serializer
        self.websocket = websocket
        self.conversation = conversation
        self.stats = CallStats(carrier)
        self.end_reason: str | None = None
        self.session: Session | None = None
        self.playout: PhonePlayout | None = None
        self._urgent: deque[Outbound] = deque()  # a clear: sent before any frame still queued
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[str] | None = None
        self._tasks = OwnedTasks(self.id, lambda task, exc: self.stop(
            f"internal error in {task.get_name()}: {type(exc).__name__}: {exc}", 1011))
        self._digits = ""
        self._dtmf_task: asyncio.Task[None] | None = None
        self._gone = False
        self._close_code = 1001  # going away: the server is shutting down

    @property
    def audio_format(self) -> AudioFormat | None:
        return self.playout.fmt if self.playout is not None else None

    def summary(self) -> object:
        return self.stats

    # --- lifecycle -----------------------------------------------------------------------------

    def stop(self, reason: str, code: int = 1001) -> None:
        """End the call from our side (shutdown, a failed task, a carrier not reading); idempotent.
        The call ends at once: its reader is cancelled and :meth:`run` tears it down."""
        if self.end_reason is None:
            self.end_reason = reason
            self._close_code = code
            log.warning("%s call %s: ending it: %s", self.stats.carrier, self.stats.call_id or "?", reason)
        if self._reader is not None:
            self._reader.cancel()

    async def run(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"{self.id}:reader")
        close_code: int | None = None
        try:
            self.stats.ended = await self._reader
            if self.end_reason is not None:  # we refused the call (e.g. an unknown conversation)
                close_code = 1008
        except asyncio.CancelledError:
            if self.end_reason is None:
                raise  # our own task was cancelled, not just the reader
            self.stats.ended = self.end_reason
            close_code = self._close_code
        except Exception as exc:  # a bug handling a carrier event: this call ends, with its reason
            log.error("%s call %s: the reader failed", self.stats.carrier, self.stats.call_id or "?", exc_info=exc)
            self.end_reason = self.stats.ended = f"internal error: {type(exc).__name__}: {exc}"
            close_code = 1011
        finally:
            self.end_reason = self.end_reason or self.stats.ended or "closed"
            await self._shutdown()
            if close_code is not None:
                with contextlib.suppress(Exception):
                    await self.websocket.close(code=close_code, reason=self.end_reason[:120])

    async def _shutdown(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.state.sessions.discard(self.session)
        await self._tasks.cancel_all()
        s = self.stats
        log.info("%s call %s ended (%s): %d frames in, %d out, %d clears, %d bad frames", s.carrier,
                 s.call_id or "?", s.ended or "closed", s.frames_in, s.frames_out, s.clears, s.bad_frames)

    async def _read(self) -> str:
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return "disconnected"
            if message["type"] == "websocket.disconnect":
                return "disconnected"
            raw: Outbound | None = message.get("text")
            if raw is None:
                raw = message.get("bytes")
            if raw is None:
                continue
            try:
                events = self.serializer.parse(raw)
            except BadFrame as exc:
                self._bad_frame(str(exc))
                continue
            except Exception as exc:  # a parser bug must cost one frame, not the call
                log.exception("%s call %s: the frame parser failed", self.stats.carrier, self.stats.call_id or "?")
                self._bad_frame(f"{type(exc).__name__} in the parser")
                continue
            for event in events:
                if isinstance(event, Stop):
                    return event.reason
                if (ended := await self._on_carrier(event)) is not None:
                    return ended

    def _bad_frame(self, why: str) -> None:
        self.stats.bad_frames += 1
        level = logging.WARNING if self.stats.bad_frames <= _LOGGED_BAD_FRAMES else logging.DEBUG
        log.log(level, "%s call %s: skipped a bad frame: %s", self.stats.carrier, self.stats.call_id or "?", why)

    # --- carrier -> session --------------------------------------------------------------------

    async def _on_carrier(self, event: CarrierEvent) -> str | None:
        """Handle one carrier event; a reason string ends the call."""
        match event:
            case Start():
                if self.session is not None:
                    self._bad_frame("a second 'start' on the same stream")
                    return None
                return await self._start(event)
            case Media(audio=audio):
                if self.session is None or self.playout is None:
                    self.state.metrics.dropped_audio_frames.inc()
                    self._bad_frame("media before 'start'")
                    return None
                self.stats.frames_in += 1
                try:
                    self.session.feed_audio(audio, self.playout.fmt)
                except ProtocolError as exc:
                    self._bad_frame(f"undecodable audio: {exc}")
            case Dtmf(digit=digit):
                self._on_dtmf(digit)
            case MarkAck(name=name):
                if self.playout is not None and self.playout.ack(name) is not None:
                    self.stats.marks_acked += 1
        return None

    async def _start(self, start: Start) -> str | None:
        conversation = self.conversation
        if conversation is None and start.params.get("conversation"):
            try:  # the same answer as on every transport: an unknown conversation is refused
                conversation = await self.state.resolve_conversation(start.params["conversation"])
            except HttpError as err:
                log.warning("%s call %s refused: %s", self.stats.carrier, start.call_id, err.message)
                self.end_reason = err.message
                return err.message
        self.playout = PhonePlayout(start.fmt)
        session = self.session = Session(self.state.engines, self.settings, self, conversation=conversation,
                                         model=f"telephony-{self.stats.carrier}",
                                         output_lead_ms=self.settings.telephony_lead_ms,
                                         metrics=self.state.metrics, owner=self.owner)
        self.state.sessions.add(session)
        self.stats.call_id = start.call_id
        self.stats.conversation_id = session.conversation.id
        self._tasks.spawn(self._write(), "writer")
        session.start()
        if start.params.get("instructions"):  # per-number prompts: <Parameter name="instructions">
            session.update(ev.SessionConfig(instructions=start.params["instructions"]))
        log.info("%s call %s started (%s %d Hz, conversation %s)", self.stats.carrier, start.call_id,
                 start.fmt.encoding, start.fmt.rate, session.conversation.id)
        return None

    # --- the session's output sink -------------------------------------------------------------

    def send_event(self, event: ev.ServerEvent) -> None:
        if event["type"] == "error":  # nobody on a phone line reads events; the log does
            log.warning("%s call %s: session error: %s", self.stats.carrier, self.stats.call_id,
                        event["error"].get("message"))

    def send_audio(self, chunk: AudioChunk) -> None:
        assert self.playout is not None
        if self.playout.queued > MAX_UNSENT_FRAMES:
            self.stop(f"the carrier is not reading ({self.playout.queued * FRAME_MS / 1000:.0f} s of audio unsent)",
                      1008)
            return
        self.playout.push(chunk.item_id, chunk.encoded())
        self._wake.set()

    def end_audio(self, response_id: str, item_id: str) -> None:
        assert self.playout is not None
        self.playout.end_item()
        self._wake.set()

    def clear(self) -> None:
        """Barge-in: drop the frames not yet sent and tell the carrier to drop what it buffers."""
        playout = self.playout
        if playout is None:
            return
        item = playout.playing_item()
        if item is not None and playout.sent_ms.get(item):
            self.stats.truncations.append((item, int(playout.heard_ms.get(item, 0.0))))
        playout.clear()
        if not self._urgent:  # one clear waiting to be sent clears as much as several
            self._urgent.append(self.serializer.clear())
        self.stats.clears += 1
        self._wake.set()

    def playback_position(self, item_id: str) -> float | None:
        """The audio of the item covered by the last mark the carrier echoed."""
        return self.playout.heard_ms.get(item_id, 0.0) if self.playout is not None else None

    def end(self, reason: str) -> None:
        """The session ended itself (a time limit): hang up (close the media stream with 1008)."""
        self.stop(reason, code=1008)

    async def _write(self) -> None:
        """Send what the session handed over, at once: it is already paced (marks right after their audio)."""
        assert self.playout is not None
        playout = self.playout
        while True:
            if self._urgent:
                await self._send(self._urgent.popleft())
                continue
            out = playout.pop()
            if out is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if isinstance(out, Frame):
                self.stats.frames_out += 1
                await self._send(self.serializer.media(out.audio))
            else:
                await self._send(self.serializer.mark(out.name))

    async def _send(self, message: Outbound) -> None:
        if self._gone:
            return
        try:
            if isinstance(message, bytes):
                await self.websocket.send_bytes(message)
            else:
                await self.websocket.send_text(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._gone = True

    # --- keypad --------------------------------------------------------------------------------

    def _on_dtmf(self, digit: str) -> None:
        if self.session is None:
            self._bad_frame("dtmf before 'start'")
            return
        self.stats.dtmf += digit
        if self.settings.dtmf_interrupts:
            self.session.interrupt("dtmf")  # exactly what talking over the assistant does
        self._digits += digit
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
            self._dtmf_task = None
        if digit == "#":
            self._submit_digits()
        else:
            self._dtmf_task = self._tasks.spawn(self._digits_after_gap(), "dtmf")

    async def _digits_after_gap(self) -> None:
        await asyncio.sleep(DTMF_GAP_S)
        self._dtmf_task = None
        self._submit_digits()

    def _submit_digits(self) -> None:
        digits, self._digits = self._digits, ""
        if not digits or self.session is None:
            return
        self.session.add_user_text(f"(The caller pressed {' '.join(digits)} on the phone keypad.)")
        self._tasks.spawn(self._reply_when_idle(self.session), "keypad-reply")

    @staticmethod
    async def _reply_when_idle(session: Session) -> None:
        await session.wait_idle()  # a reply still speaking (keypad presses that do not interrupt)
        session.create_response()


# --- the endpoint ----------------------------------------------------------------------------------


async def _authorize_carrier(websocket: WebSocket, carrier: str) -> AppState:
    """Twilio signs the handshake (checked when its auth token is set); others present an API key."""
    state = app_state(websocket)
    settings = state.settings
    if carrier == "twilio" and settings.twilio_auth_token:
        url = public_url(settings, websocket.url, websocket=True)
        if verify_twilio(settings.twilio_auth_token, url, (), websocket.headers.get("x-twilio-signature")):
            return state
        log.warning("refused a Twilio media stream with a bad X-Twilio-Signature (url %s)", url)
        raise HttpError(403, "Invalid X-Twilio-Signature.", "invalid_signature")
    return await authorize(websocket, CARRIER)


async def media_endpoint(websocket: WebSocket) -> None:
    carrier = websocket.path_params["carrier"]
    make = CARRIERS.get(carrier)
    try:
        if make is None:
            raise HttpError(404, f"Unknown carrier {carrier!r}; use one of {sorted(CARRIERS)}.", "unknown_carrier")
        state = await _authorize_carrier(websocket, carrier)
        owner = session_owner(websocket, state, CARRIER)
        conversation = await state.resolve_conversation(websocket.query_params.get("conversation"))
        seat = state.admit_session(owner)  # last: nothing after it can refuse
    except HttpError as err:
        await refuse(websocket, err)
        return
    try:
        await websocket.accept()
        bridge = CallBridge(state, carrier, make(), websocket, conversation, owner)
        await state.calls.run(bridge, bridge.run())
    finally:
        seat.release()


routes = [
    Route("/telephony/twilio/voice", twilio_voice, methods=["POST"]),
    WebSocketRoute("/telephony/{carrier}/media", media_endpoint),
]
