"""``POST /v1/realtime/calls``: the Realtime conversation over WebRTC. Translation only.

The client POSTs its SDP offer (``Content-Type: application/sdp``, same auth as the WebSocket: an
API key or an ``ek_`` client token as Bearer) and gets the SDP answer (201, ``application/sdp``,
``Location: /v1/realtime/calls/{call_id}``). Then, like the hosted API:

* the caller's microphone arrives as an Opus track, decoded frames go to ``Session.feed_audio``
  with their own format (the one input path of every transport);
* the assistant's voice leaves on an outbound track that plays in real time (rtc_audio.py); the
  call is the session's output sink, so audio chunks go to the track (48 kHz, never re-decoded)
  and barge-in is the sink's ``clear()``: the track's queue is dropped at once;
* the data channel ``oai-events`` carries the same JSON events as the WebSocket, both ways,
  except ``response.output_audio.delta``: that audio goes to the track instead, and the track's
  playback drives ``output_audio_buffer.started`` / ``.stopped``.

One :class:`RtcCall` owns one peer connection, one Session and every task of the call; the app's
:class:`~voicebot.calls.CallRegistry` owns the calls. A call ends when the peer closes
(DTLS close / RTCP BYE), when ICE fails, when it never connects within
``webrtc_connect_timeout_s``, when the peer stops sending audio for ``webrtc_media_timeout_s``
(it vanished without closing; consent freshness alone would take ~30 s), on hangup, or at
shutdown — and its teardown closes the peer connection, the Session and awaits every task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from voicebot.core import events as ev
from voicebot.core.audio import AudioFormat
from voicebot.core.conversation import Conversation
from voicebot.errors import HttpError, ProtocolError
from voicebot.session import Session
from voicebot.sink import AudioChunk
from voicebot.state import AppState, Seat
from voicebot.tasks import OwnedTasks
from voicebot.transports.access import BROWSER, authorize, session_owner
from voicebot.transports.http_common import json_errors
from voicebot.transports.rtc_audio import RTC_FORMAT, PlayoutTrack, read_track
from voicebot.transports.rtc_ice import IceConfigError, candidate_addresses, host_addresses, rtc_configuration
from voicebot.transports.rtc_sdp import DATA_CHANNEL_LABEL, MAX_SDP_BYTES, Offer, OfferError, parse_offer

log = logging.getLogger(__name__)

KIND = "webrtc"
ANSWER_TIMEOUT_S = 10.0
MAX_PENDING_EVENTS = 1000  # server events queued until the data channel opens
MAX_INBOX = 1000  # client events waiting for the session
HANGUP_FLUSH_S = 0.3  # a session that ends itself lets its error event leave for this long, then hangs up
CHUNK_MS = 100.0  # audio chunks pushed to the track (the track plays them in 20 ms frames)


class RtcCall:
    """One WebRTC call: a peer connection, a Session, and the tasks between them.

    The call is its session's :class:`~voicebot.sink.OutputSink`: events go to the data channel,
    audio to the outbound track.
    """

    kind = KIND
    audio_format: AudioFormat | None = RTC_FORMAT
    chunk_ms = CHUNK_MS
    holds_output = True

    def __init__(self, state: AppState, offer: Offer, *, model: str, conversation: Conversation | None,
                 owner: str | None = None, seat: Seat | None = None) -> None:
        settings = state.settings
        self.id = ev.new_id("rtc")
        self.state = state
        self.offer = offer
        self.pc = RTCPeerConnection(rtc_configuration(settings.ice_servers))
        self.track = PlayoutTrack(on_started=self._on_playout_started, on_stopped=self._on_playout_stopped)
        self.session = Session(state.engines, settings, self, conversation=conversation, model=model,
                               output_lead_ms=settings.webrtc_output_lead_ms, metrics=state.metrics, owner=owner)
        self.channel: RTCDataChannel | None = None
        self.seat = seat  # its place among --max-sessions, given up at teardown
        self.created_at = time.monotonic()
        self.connected_at: float | None = None
        self.last_media = self.created_at
        self.end_reason: str | None = None
        self._pending: list[str] = []
        self._inbox: asyncio.Queue[str | bytes] = asyncio.Queue(MAX_INBOX)
        self._wake = asyncio.Event()
        self._tasks = OwnedTasks(self.id, lambda task, exc: self.stop(f"internal error in {task.get_name()}: {exc}"))
        self._has_reader = False
        self._refusing: str | None = None  # the code microphone frames are being refused with
        self._torn_down = False
        self.pc.on("connectionstatechange", self._guarded(self._on_connection_state))
        self.pc.on("datachannel", self._guarded(self._on_datachannel))
        self.pc.on("track", self._guarded(self._on_track))

    # --- setup ---------------------------------------------------------------------------------

    async def answer(self) -> str:
        """Apply the offer and return the answer SDP (host candidates on the bound address)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(self.offer.sdp, "offer"))
        self.pc.addTrack(self.track)  # attaches to the offered audio transceiver: sendrecv
        answer = await self.pc.createAnswer()
        # Gathering happens inside setLocalDescription; the answer then carries every candidate.
        with host_addresses(candidate_addresses(self.state.settings.host)):
            await self.pc.setLocalDescription(answer)
        self.session.start()  # session.created waits in _pending until the data channel opens
        return str(self.pc.localDescription.sdp)

    def summary(self) -> object:
        return None

    # --- supervision and teardown ----------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Ask the call to end (idempotent); :meth:`run` does the teardown."""
        if self.end_reason is None:
            self.end_reason = reason
        self._wake.set()

    def _guarded(self, handler: Callable[..., None]) -> Callable[..., None]:
        """An aiortc event handler whose exception ends this call with the reason (logged), instead of
        escaping into aiortc's event emitter, where it would be lost or kill aiortc's own task."""
        def run(*args: Any) -> None:
            try:
                handler(*args)
            except Exception as exc:
                log.error("call %s: %s failed", self.id, handler.__name__, exc_info=exc)
                self.stop(f"internal error in {handler.__name__}: {type(exc).__name__}: {exc}")
        return run

    async def run(self) -> None:
        """Supervise the call until it ends, then tear it down. The registry owns this task."""
        settings = self.state.settings
        try:
            while self.end_reason is None:
                now = time.monotonic()
                if self.connected_at is None:
                    if now - self.created_at > settings.webrtc_connect_timeout_s:
                        self.stop(f"not connected after {settings.webrtc_connect_timeout_s:g} s")
                        break
                elif now - self.last_media > settings.webrtc_media_timeout_s:
                    self.stop(f"no audio from the peer for {settings.webrtc_media_timeout_s:g} s")
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await self._wake.wait()
        finally:
            await self.teardown()

    async def teardown(self) -> None:
        """Close the session, the peer connection and every task; idempotent, never raises."""
        if self._torn_down:
            return
        self._torn_down = True
        self.end_reason = self.end_reason or "closed"
        try:
            await self.session.close()
        finally:
            self.state.sessions.discard(self.session)
            if self.seat is not None:
                self.seat.release()
            self.track.stop()
            try:
                async with asyncio.timeout(5):
                    await self.pc.close()
            except Exception:
                log.exception("call %s: closing the peer connection failed", self.id)
            await self._tasks.cancel_all(5.0)
            log.info("call %s ended: %s", self.id, self.end_reason)

    def end(self, reason: str) -> None:
        """The session ended itself (a time limit): hang up once its ``error`` event has left."""
        self._tasks.spawn(self._hang_up_after_events(reason), "hang-up")

    async def _hang_up_after_events(self, reason: str) -> None:
        # channel.send() only queues for SCTP: give the packet time to leave before the connection closes.
        await asyncio.sleep(HANGUP_FLUSH_S)
        self.stop(reason)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.connected_at is None:
            self.connected_at = self.last_media = time.monotonic()
        elif state in ("failed", "closed"):
            self.stop(f"connection {state}")
        self._wake.set()

    # --- media in --------------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._has_reader:
            return  # one microphone per call; extra tracks are not read
        self._has_reader = True
        self._tasks.spawn(self._read_microphone(track), "microphone")

    async def _read_microphone(self, track: MediaStreamTrack) -> None:
        # A failure is the owned task's: it ends the call with its own reason (OwnedTasks), which
        # a catch-all "track ended" here would have hidden.
        await read_track(track, self._on_audio)
        self.stop("the peer's audio track ended")

    def _on_audio(self, pcm: bytes, fmt: AudioFormat) -> None:
        self.last_media = time.monotonic()
        try:
            self.session.feed_audio(pcm, fmt)
            self._refusing = None
        except ProtocolError as err:  # e.g. input_audio_buffer_full with turn detection off
            if err.code != self._refusing:  # once per run of refused frames, not 50 errors a second
                self._refusing = err.code
                self.session.emit(ev.error_event(err))

    # --- events in -------------------------------------------------------------------------------

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != DATA_CHANNEL_LABEL or self.channel is not None:
            log.info("call %s: ignoring data channel %r", self.id, channel.label)
            return
        self.channel = channel
        channel.on("message", self._guarded(self._on_message))
        channel.on("open", self._guarded(self._flush_pending))
        self._tasks.spawn(self._read_events(), "events")
        if channel.readyState == "open":
            self._flush_pending()

    def _on_message(self, message: str | bytes) -> None:
        limit = self.state.settings.max_message_bytes
        if len(message) > limit:
            self.send_event(ev.error_event(ProtocolError(
                f"Message of {len(message)} bytes exceeds the {limit} byte limit.", code="message_too_large")))
            return
        try:
            self._inbox.put_nowait(message)
        except asyncio.QueueFull:
            self.send_event(ev.error_event(ProtocolError(
                "Too many events waiting to be handled; this one was dropped.", code="rate_limit_exceeded")))

    async def _read_events(self) -> None:
        while True:
            message = await self._inbox.get()
            if isinstance(message, bytes):
                self.send_event(ev.error_event(ProtocolError(
                    "Binary messages are not supported: send JSON text events.", code="invalid_message")))
                continue
            await self.session.handle_raw(message)

    # --- the session's output sink ---------------------------------------------------------------

    def send_event(self, event: ev.ServerEvent) -> None:
        text = ev.dumps(event)
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            try:
                channel.send(text)
            except Exception as exc:  # the channel broke under us: the call cannot go on without it
                self.stop(f"the data channel failed: {type(exc).__name__}: {exc}")
        elif not self._torn_down and len(self._pending) < MAX_PENDING_EVENTS:
            self._pending.append(text)

    def send_audio(self, chunk: AudioChunk) -> None:
        self.track.push(chunk.samples, chunk.item_id, chunk.response_id)  # 48 kHz, as the track plays

    def end_audio(self, response_id: str, item_id: str) -> None:
        self.track.end(response_id)

    def clear(self) -> None:
        """Barge-in: whatever has not left through the track is dropped now."""
        dropped = self.track.clear()
        if dropped:
            log.debug("call %s: dropped %.0f ms of queued audio", self.id, dropped)

    def playback_position(self, item_id: str) -> float | None:
        return self.track.played_ms(item_id)

    def _on_playout_started(self, response_id: str) -> None:
        self.send_event(ev.server_event("output_audio_buffer.started", response_id=response_id))

    def _on_playout_stopped(self, response_id: str) -> None:
        self.send_event(ev.server_event("output_audio_buffer.stopped", response_id=response_id))

    def _flush_pending(self) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        pending, self._pending = self._pending, []
        for text in pending:
            channel.send(text)


# --- the endpoints ---------------------------------------------------------------------------------


async def _read_offer(request: Request) -> Offer:
    """The SDP offer of the body, refusing to buffer more than an offer can need."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_SDP_BYTES:
        raise OfferError(f"The SDP offer is {length} bytes; the limit is {MAX_SDP_BYTES}.")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_SDP_BYTES:
                raise OfferError(f"The SDP offer exceeds the {MAX_SDP_BYTES} byte limit.")
    except ClientDisconnect:
        raise OfferError("The client went away before sending the whole offer.") from None
    return parse_offer(bytes(body))


def _check_new_offer(state: AppState, offer: Offer) -> None:
    call_id = state.calls.requests.get(offer.key)
    if call_id is not None:
        status = "has ended" if call_id in state.calls.ended else "is active"
        raise OfferError(f"This offer was already answered: call {call_id} {status}. "
                         "Create a new offer (a new RTCPeerConnection) for a new call.")


@json_errors
async def create_call(request: Request) -> Response:
    state = await authorize(request, BROWSER)
    owner = session_owner(request, state)
    seat = state.admit_session(owner)
    try:
        call = await _new_call(request, state, owner, seat)  # from then on its teardown releases the seat
    except BaseException:
        seat.release()  # refused, or failed before there was a call
        raise
    state.sessions.add(call.session)
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            answer = await call.answer()
    except Exception as exc:
        call.stop(f"could not answer: {exc}")
        await call.teardown()
        if isinstance(exc, TimeoutError):
            raise HttpError(503, "Answering the offer took too long.", "answer_timeout") from None
        detail = str(exc) or type(exc).__name__
        raise HttpError(400, f"The offer cannot be answered: {detail}", "invalid_offer") from None
    state.calls.start(call, call.run())
    state.calls.answered(call.offer.key, call)
    log.info("call %s: answered (%s%s)", call.id, "/".join(call.offer.codecs),
             ", oai-events" if call.offer.has_data_channel else ", no data channel")
    return Response(answer, status_code=201, media_type="application/sdp",
                    headers={"Location": f"/v1/realtime/calls/{call.id}"})


async def _new_call(request: Request, state: AppState, owner: str | None, seat: Seat) -> RtcCall:
    """The call for this request's SDP offer, or HttpError (4xx for the offer, 5xx for the server)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/sdp":
        raise HttpError(400, f"Content-Type must be application/sdp (got {content_type or 'none'}): "
                        "POST the SDP offer as the body.", "invalid_content_type")
    try:
        offer = await _read_offer(request)
        _check_new_offer(state, offer)
    except OfferError as err:
        raise HttpError(400, str(err), "invalid_offer") from None
    if state.calls.count(KIND) >= state.settings.webrtc_max_calls:
        raise HttpError(503, f"The server is at its limit of {state.settings.webrtc_max_calls} calls; "
                        "try again later.", "too_many_calls")
    conversation = await state.resolve_conversation(request.query_params.get("conversation"))
    try:
        return RtcCall(state, offer, model=request.query_params.get("model") or "voicebot", conversation=conversation,
                       owner=owner, seat=seat)
    except IceConfigError as err:
        log.error("WebRTC is misconfigured: %s", err)
        raise HttpError(500, f"The server's ICE configuration is invalid: {err}", "server_misconfigured",
                        type="server_error") from None


def _call_or_error(state: AppState, call_id: str) -> RtcCall:
    call = state.calls.live.get(call_id)
    if isinstance(call, RtcCall):
        return call
    ended = state.calls.ended.get(call_id)
    if ended is not None and ended.kind == KIND:
        raise HttpError(400, f"Call {call_id} has ended ({ended.reason}); POST a new offer to "
                        "/v1/realtime/calls to start a new call.", "call_ended")
    raise HttpError(404, f"Call '{call_id}' does not exist.", "call_not_found")


@json_errors
async def hangup(request: Request) -> Response:
    """``POST /v1/realtime/calls/{call_id}/hangup``, as in the hosted API (also while shutting down)."""
    state = await authorize(request, BROWSER, new_work=False)
    call = _call_or_error(state, request.path_params["call_id"])
    await state.calls.end(call, "hung up")
    return Response(status_code=200)


@json_errors
async def offer_on_call(request: Request) -> Response:
    """A new offer on an existing call: renegotiation is not supported; a closed call says so."""
    state = await authorize(request, BROWSER)
    call = _call_or_error(state, request.path_params["call_id"])
    raise HttpError(400, f"Call {call.id} is active and renegotiation is not supported; hang up and "
                    "start a new call.", "renegotiation_not_supported")


routes = [
    Route("/v1/realtime/calls", create_call, methods=["POST"]),
    Route("/v1/realtime/calls/{call_id}/hangup", hangup, methods=["POST"]),
    Route("/v1/realtime/calls/{call_id}", offer_on_call, methods=["POST"]),
]
