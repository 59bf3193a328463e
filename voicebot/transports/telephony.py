"""``/telephony/{carrier}/media``: a carrier's media stream <-> one Session. Translation only.

The carrier (Twilio, Telnyx, Vonage — chosen by the path) only changes the serializer; this
bridge is the same for all of them:

* caller audio (μ-law/A-law 8 kHz or L16) goes to ``Session.feed_audio`` in the carrier's own
  format — the Session decodes and resamples it (band-limited, soxr) like any other client's;
* the reply comes back in the same format from the Session; :class:`PhonePlayout` cuts it into
  20 ms frames, which a pacer sends on a real-time clock (``--telephony-lead-ms`` ahead), with a
  mark every 100 ms: the carrier's mark echoes are the caller's playback clock;
* when the Session reports ``input_audio_buffer.speech_started`` (it has already cancelled the
  reply), the bridge drops its queue, sends ``clear``, and once the reply is over sends
  ``conversation.item.truncate`` with the audio covered by the last acknowledged mark, so the
  history keeps only what the caller heard;
* keypad digits become a user message the assistant answers (and may interrupt it first).

Bad frames are logged and skipped; only the end of the socket or a ``stop`` ends the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voicebot.auth import bearer
from voicebot.core import events as ev
from voicebot.core.playout import PlayoutClock
from voicebot.errors import ProtocolError
from voicebot.session import Session
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
from voicebot.transports.realtime_ws import refuse
from voicebot.transports.twiml import public_url, twilio_voice, verify_twilio

if TYPE_CHECKING:
    from voicebot.server import AppState

log = logging.getLogger(__name__)

DTMF_GAP_S = 1.5  # digits typed within this gap are one entry ("1 2 3 4"); '#' ends it at once
SESSION_EXTRA_LEAD_MS = 200  # the Session runs this far ahead of the pacer, so the pacer never starves
CALL_LOG = "telephony_calls"  # AppState.extras key: the last calls' statistics
_LOGGED_BAD_FRAMES = 20  # per call at WARNING; the rest at DEBUG (a broken peer must not flood the log)


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
    truncations: list[tuple[str, int]] = field(default_factory=list)  # (item id, audio_end_ms)
    dtmf: str = ""
    bad_frames: int = 0
    ended: str = ""


class CallBridge:
    """One call: the carrier's socket on one side, a Session on the other."""

    def __init__(self, state: AppState, carrier: str, serializer: Serializer, websocket: WebSocket,
                 query: Mapping[str, str]) -> None:
        self.state = state
        self.settings = state.settings
        self.serializer = serializer
        self.websocket = websocket
        self.query = dict(query)
        self.stats = CallStats(carrier)
        self.session: Session | None = None
        self.playout: PhonePlayout | None = None
        self._events: asyncio.Queue[ev.ServerEvent | None] = asyncio.Queue()
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._clock = PlayoutClock(self.settings.telephony_lead_ms)
        self._tasks: list[asyncio.Task[None]] = []
        self._active_response: str | None = None
        self._truncate: tuple[str, float] | None = None  # sent once the reply is over
        self._reply_after_done = False
        self._digits = ""
        self._dtmf_task: asyncio.Task[None] | None = None
        self._gone = False

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.stats.ended = await self._read()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        tasks: list[asyncio.Task[None]] = [*self._tasks]
        if self._dtmf_task is not None:
            tasks.append(self._dtmf_task)
        if self.session is not None:
            await self.session.close()
            self.state.sessions.discard(self.session)
        self._events.put_nowait(None)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        calls: deque[CallStats] = self.state.extras.setdefault(CALL_LOG, deque(maxlen=50))
        calls.append(self.stats)
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
            for event in events:
                if isinstance(event, Stop):
                    return event.reason
                await self._on_carrier(event)

    def _bad_frame(self, why: str) -> None:
        self.stats.bad_frames += 1
        level = logging.WARNING if self.stats.bad_frames <= _LOGGED_BAD_FRAMES else logging.DEBUG
        log.log(level, "%s call %s: skipped a bad frame: %s", self.stats.carrier, self.stats.call_id or "?", why)

    # --- carrier -> session --------------------------------------------------------------------

    async def _on_carrier(self, event: CarrierEvent) -> None:
        match event:
            case Start():
                if self.session is None:
                    await self._start(event)
                else:
                    self._bad_frame("a second 'start' on the same stream")
            case Media(audio=audio):
                if self.session is None:
                    self._bad_frame("media before 'start'")
                    return
                self.stats.frames_in += 1
                try:
                    self.session.feed_audio(audio)
                except ProtocolError as exc:
                    self._bad_frame(f"undecodable audio: {exc}")
            case Dtmf(digit=digit):
                await self._on_dtmf(digit)
            case MarkAck(name=name):
                if self.playout is not None and self.playout.ack(name) is not None:
                    self.stats.marks_acked += 1

    async def _start(self, start: Start) -> None:
        conversation_id = start.params.get("conversation") or self.query.get("conversation")
        conversation = self.state.conversations.get(conversation_id) if conversation_id else None
        if conversation_id and conversation is None:
            # Never drop a call over this: answer it with a conversation of its own.
            log.warning("call %s: conversation %r does not exist; using a new one", start.call_id, conversation_id)
        self.session = Session(self.state.engines, self.settings, self._events.put_nowait,
                               conversation=conversation, model=f"telephony-{self.stats.carrier}",
                               output_lead_ms=self.settings.telephony_lead_ms + SESSION_EXTRA_LEAD_MS)
        self.state.sessions.add(self.session)
        self.stats.call_id = start.call_id
        self.stats.conversation_id = self.session.conversation.id
        self.playout = PhonePlayout(start.fmt)
        self._tasks = [asyncio.create_task(self._pump(), name=f"{self.session.id}:phone-events"),
                       asyncio.create_task(self._pace(), name=f"{self.session.id}:phone-pacer")]
        self.session.start()
        fmt = start.fmt.to_wire()
        config: dict[str, Any] = {"type": "realtime", "audio": {"input": {"format": fmt}, "output": {"format": fmt}}}
        if start.params.get("instructions"):  # per-number prompts: <Parameter name="instructions">
            config["instructions"] = start.params["instructions"]
        await self._handle({"type": "session.update", "session": config})
        log.info("%s call %s started (%s %d Hz, conversation %s)", self.stats.carrier, start.call_id,
                 start.fmt.encoding, start.fmt.rate, self.session.conversation.id)

    async def _handle(self, event: dict[str, Any]) -> None:
        """A client event into the Session, exactly as a Realtime client would send it."""
        if self.session is not None:
            await self.session.handle_raw(json.dumps(event))

    # --- session -> carrier --------------------------------------------------------------------

    async def _pump(self) -> None:
        while (event := await self._events.get()) is not None:
            await self._on_session(event)

    async def _on_session(self, event: ev.ServerEvent) -> None:
        assert self.playout is not None
        match event["type"]:
            case "response.output_audio.delta":
                self.playout.push(event["item_id"], event["delta"])
                self._wake.set()
            case "response.output_audio.done":
                self.playout.end_item()
                self._wake.set()
            case "response.created":
                self._active_response = event["response"]["id"]
            case "response.done":
                if self._active_response == event["response"]["id"]:
                    self._active_response = None
                await self._after_reply()
            case "input_audio_buffer.speech_started":
                await self._barge_in()
            case "error":
                log.warning("%s call %s: session error: %s", self.stats.carrier, self.stats.call_id,
                            event["error"].get("message"))

    async def _pace(self) -> None:
        """Send queued frames on the real-time clock; marks go out right after their audio."""
        assert self.playout is not None
        playout = self.playout
        while True:
            upcoming = playout.peek()
            if upcoming is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if isinstance(upcoming, Frame):
                delay = self._clock.delay_before_send(time.monotonic())
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue  # look again: a barge-in may have cleared the queue meanwhile
            async with self._send_lock:  # popped and sent atomically: a clear cannot slip between
                out = playout.pop()
                if out is None:
                    continue
                if isinstance(out, Frame):
                    self._clock.sent(FRAME_MS, time.monotonic())
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

    # --- barge-in ------------------------------------------------------------------------------

    async def _barge_in(self) -> None:
        """Stop what the caller hears now; cut the history to the last acknowledged mark."""
        playout = self.playout
        if playout is None or not (playout.playing or self._active_response):
            return
        item = playout.playing_item()
        async with self._send_lock:
            playout.clear()
            await self._send(self.serializer.clear())
        self._clock = PlayoutClock(self.settings.telephony_lead_ms)  # the carrier's buffer is empty now
        self.stats.clears += 1
        if item is not None and playout.sent_ms.get(item):
            self._truncate = (item, playout.heard_ms.get(item, 0.0))
            if self._active_response is None:
                await self._after_reply()

    async def _after_reply(self) -> None:
        """The reply is over: apply a pending truncation, start a reply a keypad entry asked for."""
        if self._active_response is not None:
            return
        if self._truncate is not None and self.session is not None:
            item_id, heard = self._truncate
            self._truncate = None
            if item_id in self.session.conversation:
                # The last frame was padded with silence: never claim more than the item's audio.
                audio_end = int(min(heard, self.session.conversation.get(item_id).audio_ms))
                self.stats.truncations.append((item_id, audio_end))
                await self._handle({"type": "conversation.item.truncate", "item_id": item_id,
                                    "content_index": 0, "audio_end_ms": audio_end})
        if self._reply_after_done:
            self._reply_after_done = False
            await self._handle({"type": "response.create"})

    # --- keypad --------------------------------------------------------------------------------

    async def _on_dtmf(self, digit: str) -> None:
        if self.session is None:
            self._bad_frame("dtmf before 'start'")
            return
        self.stats.dtmf += digit
        if self.settings.dtmf_interrupts:
            active = self._active_response
            await self._barge_in()
            if active is not None:
                await self._handle({"type": "response.cancel"})
        self._digits += digit
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
            self._dtmf_task = None
        if digit == "#":
            await self._submit_digits()
        else:
            self._dtmf_task = asyncio.create_task(self._digits_after_gap(), name=f"{self.session.id}:dtmf")

    async def _digits_after_gap(self) -> None:
        await asyncio.sleep(DTMF_GAP_S)
        self._dtmf_task = None
        await self._submit_digits()

    async def _submit_digits(self) -> None:
        digits, self._digits = self._digits, ""
        if not digits:
            return
        said = f"(The caller pressed {' '.join(digits)} on the phone keypad.)"
        await self._handle({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": said}]}})
        if self._active_response is None:
            await self._handle({"type": "response.create"})
        else:
            self._reply_after_done = True


# --- the endpoint ----------------------------------------------------------------------------------


async def _authorized(websocket: WebSocket, state: AppState, carrier: str) -> bool:
    """Twilio signs the handshake (checked when its auth token is set); others present an API key."""
    settings = state.settings
    if carrier == "twilio" and settings.twilio_auth_token:
        url = public_url(settings, websocket.url, websocket=True)
        if verify_twilio(settings.twilio_auth_token, url, (), websocket.headers.get("x-twilio-signature")):
            return True
        log.warning("refused a Twilio media stream with a bad X-Twilio-Signature (url %s)", url)
        await refuse(websocket, 403, "Invalid X-Twilio-Signature.", "invalid_signature")
        return False
    key = bearer(websocket.headers) or websocket.query_params.get("token")
    if state.auth.accepts(key):
        return True
    await refuse(websocket, 401, "Missing API key." if key is None else "Incorrect API key provided.",
                 "invalid_api_key")
    return False


async def media_endpoint(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.voicebot
    carrier = websocket.path_params["carrier"]
    make = CARRIERS.get(carrier)
    if make is None:
        await refuse(websocket, 404, f"Unknown carrier {carrier!r}; use one of {sorted(CARRIERS)}.",
                     "unknown_carrier")
        return
    if not await _authorized(websocket, state, carrier):
        return
    await websocket.accept()
    await CallBridge(state, carrier, make(), websocket, websocket.query_params).run()


routes = [
    Route("/telephony/twilio/voice", twilio_voice, methods=["POST"]),
    WebSocketRoute("/telephony/{carrier}/media", media_endpoint),
]
