"""``POST /v1/realtime/calls``: the Realtime conversation over WebRTC. Translation only.

The client POSTs its SDP offer (``Content-Type: application/sdp``, same auth as the WebSocket: an
API key or an ``ek_`` client token as Bearer) and gets the SDP answer (201, ``application/sdp``,
``Location: /v1/realtime/calls/{call_id}``). Then, like the hosted API:

* the caller's microphone arrives as an Opus track -> 16 kHz -> ``Session.feed_pcm16k``;
* the assistant's voice leaves on an outbound track that plays in real time (rtc_audio.py);
* the data channel ``oai-events`` carries the same JSON events as the WebSocket, both ways,
  except ``response.output_audio.delta``: that audio goes to the track instead.

One :class:`RtcCall` owns one peer connection, one Session and every task of the call; a
:class:`CallRegistry` (in ``AppState.extras``) owns the calls. A call ends when the peer closes
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
from collections import OrderedDict
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from voicebot.auth import bearer, origin_allowed
from voicebot.core import events as ev
from voicebot.core.audio import AudioFormat, Int16Array, StreamResampler, decode
from voicebot.errors import ProtocolError
from voicebot.session import Session
from voicebot.transports.rtc_audio import RTC_RATE, PlayoutTrack, read_track
from voicebot.transports.rtc_ice import IceConfigError, candidate_addresses, host_addresses, rtc_configuration
from voicebot.transports.rtc_sdp import DATA_CHANNEL_LABEL, MAX_SDP_BYTES, Offer, OfferError, parse_offer

if TYPE_CHECKING:
    from voicebot.server import AppState

log = logging.getLogger(__name__)

RTC_FORMAT = AudioFormat("pcm16", RTC_RATE)
REGISTRY_KEY = "webrtc"
ANSWER_TIMEOUT_S = 10.0
MAX_PENDING_EVENTS = 1000  # server events queued until the data channel opens
MAX_INBOX = 1000  # client events waiting for the session
_REMEMBERED = 1000  # ended calls and answered offers kept to explain a stale request


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"type": "invalid_request_error", "code": code, "message": message,
                                   "param": None}}, status_code=status)


class RtcCall:
    """One WebRTC call: a peer connection, a Session, and the tasks between them."""

    def __init__(self, state: AppState, offer: Offer, session_kwargs: dict[str, Any]) -> None:
        settings = state.settings
        self.id = ev.new_id("rtc")
        self.state = state
        self.offer = offer
        self.pc = RTCPeerConnection(rtc_configuration(settings.ice_servers))
        self.track = PlayoutTrack(on_started=self._on_playout_started, on_drained=self._on_playout_drained)
        self.session = Session(state.engines, settings, self._on_event, output_lead_ms=settings.webrtc_output_lead_ms,
                               input_format=RTC_FORMAT, output_format=RTC_FORMAT, **session_kwargs)
        self.channel: RTCDataChannel | None = None
        self.created_at = time.monotonic()
        self.connected_at: float | None = None
        self.last_media = self.created_at
        self.end_reason: str | None = None
        self._pending: list[str] = []
        self._inbox: asyncio.Queue[str | bytes] = asyncio.Queue(MAX_INBOX)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._has_reader = False
        self._torn_down = False
        self._out_resampler: StreamResampler | None = None
        self._finished: set[str] = set()  # responses whose response.done went out
        self._audible: str | None = None  # between output_audio_buffer.started and .stopped
        self.pc.on("connectionstatechange", self._on_connection_state)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)

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
        return self.pc.localDescription.sdp

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- supervision and teardown ----------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Ask the call to end (idempotent); :meth:`run` does the teardown."""
        if self.end_reason is None:
            self.end_reason = reason
        self._wake.set()

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
            self.track.stop()
            try:
                async with asyncio.timeout(5):
                    await self.pc.close()
            except Exception:
                log.exception("call %s: closing the peer connection failed", self.id)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("call %s ended: %s", self.id, self.end_reason)

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
        self._spawn(self._read_microphone(track), "microphone")

    async def _read_microphone(self, track: MediaStreamTrack) -> None:
        try:
            await read_track(track, self._on_audio)
        finally:
            self.stop("the peer's audio track ended")

    def _on_audio(self, samples: Int16Array) -> None:
        self.last_media = time.monotonic()
        self.session.feed_pcm16k(samples)

    # --- events in -------------------------------------------------------------------------------

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != DATA_CHANNEL_LABEL or self.channel is not None:
            log.info("call %s: ignoring data channel %r", self.id, channel.label)
            return
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("open", self._flush_pending)
        self._spawn(self._read_events(), "events")
        if channel.readyState == "open":
            self._flush_pending()

    def _on_message(self, message: str | bytes) -> None:
        limit = self.state.settings.max_message_bytes
        if len(message) > limit:
            self._send(ev.error_event(ProtocolError(
                f"Message of {len(message)} bytes exceeds the {limit} byte limit.", code="message_too_large")))
            return
        try:
            self._inbox.put_nowait(message)
        except asyncio.QueueFull:
            self._send(ev.error_event(ProtocolError(
                "Too many events waiting to be handled; this one was dropped.", code="rate_limit_exceeded")))

    async def _read_events(self) -> None:
        while True:
            message = await self._inbox.get()
            if isinstance(message, bytes):
                self._send(ev.error_event(ProtocolError(
                    "Binary messages are not supported: send JSON text events.", code="invalid_message")))
                continue
            await self.session.handle_raw(message)

    # --- events and audio out ----------------------------------------------------------------------

    def _on_event(self, event: ev.ServerEvent) -> None:
        kind = event["type"]
        if kind == "response.output_audio.delta":
            self.track.push(self._to_track(event["delta"]), event.get("response_id"))
            return  # audio goes out on the track, as with the hosted API
        if kind == "response.done":
            response = event["response"]
            self._finished.add(response["id"])
            if response.get("status") == "cancelled":
                self._drop_output()
        elif kind == "output_audio_buffer.cleared":
            self._drop_output()
        self._send(event)
        if kind == "response.done" and self._audible == event["response"]["id"] and not self.track.playing:
            self._send_stopped()

    def _to_track(self, delta: bytes) -> Int16Array:
        fmt = self.session.config.output_format  # a client may change it with session.update
        samples = decode(fmt, delta)
        if fmt.rate == RTC_RATE:
            return samples
        if self._out_resampler is None or self._out_resampler.in_rate != fmt.rate:
            self._out_resampler = StreamResampler(fmt.rate, RTC_RATE)
        return self._out_resampler.process(samples)

    def _drop_output(self) -> None:
        """Barge-in: whatever has not left through the track is dropped now."""
        dropped = self.track.clear()
        if self._out_resampler is not None:
            self._out_resampler.reset()
        if dropped:
            log.debug("call %s: dropped %.0f ms of queued audio", self.id, dropped)

    def _on_playout_started(self, response_id: str | None) -> None:
        if response_id is not None and response_id != self._audible:
            self._audible = response_id
            self._send(ev.server_event("output_audio_buffer.started", response_id=response_id))

    def _on_playout_drained(self, response_id: str | None) -> None:
        # An underrun mid-response is not the end of the buffer; the end of a finished one is.
        if response_id is not None and response_id == self._audible and response_id in self._finished:
            self._send_stopped()

    def _send_stopped(self) -> None:
        response_id, self._audible = self._audible, None
        if response_id is not None:
            self._finished.discard(response_id)
            self._send(ev.server_event("output_audio_buffer.stopped", response_id=response_id))
        if len(self._finished) > 64:  # responses that never played audio
            self._finished.clear()

    def _send(self, event: ev.ServerEvent) -> None:
        text = ev.dumps(event)
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif not self._torn_down and len(self._pending) < MAX_PENDING_EVENTS:
            self._pending.append(text)

    def _flush_pending(self) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        pending, self._pending = self._pending, []
        for text in pending:
            channel.send(text)


class CallRegistry:
    """Every live call and its supervising task; remembers ended calls and answered offers."""

    def __init__(self) -> None:
        self.calls: dict[str, RtcCall] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.ended: OrderedDict[str, str] = OrderedDict()  # call id -> why it ended
        self.offers: OrderedDict[str, str] = OrderedDict()  # offer ICE ufrag -> call id

    def check_offer(self, offer: Offer) -> None:
        call_id = self.offers.get(offer.key)
        if call_id is None:
            return
        status = "has ended" if call_id in self.ended else "is active"
        raise OfferError(f"This offer was already answered: call {call_id} {status}. "
                         "Create a new offer (a new RTCPeerConnection) for a new call.")

    def start(self, call: RtcCall) -> None:
        self.calls[call.id] = call
        self._remember(self.offers, call.offer.key, call.id)
        task = asyncio.get_running_loop().create_task(call.run(), name=f"{call.id}:run")
        self._tasks[call.id] = task
        task.add_done_callback(lambda _: self._ended(call))

    def _ended(self, call: RtcCall) -> None:
        self.calls.pop(call.id, None)
        self._tasks.pop(call.id, None)
        self._remember(self.ended, call.id, call.end_reason or "closed")

    @staticmethod
    def _remember(table: OrderedDict[str, str], key: str, value: str) -> None:
        table[key] = value
        while len(table) > _REMEMBERED:
            table.popitem(last=False)

    async def end(self, call: RtcCall, reason: str) -> None:
        """End one call and wait for its teardown."""
        call.stop(reason)
        task = self._tasks.get(call.id)
        if task is not None:
            await asyncio.wait([task], timeout=10)

    async def aclose(self) -> None:
        """Shutdown: end every call and wait for its teardown."""
        for call in list(self.calls.values()):
            call.stop("server shutting down")
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=10)


def registry(state: AppState) -> CallRegistry:
    found = state.extras.get(REGISTRY_KEY)
    if not isinstance(found, CallRegistry):
        found = state.extras[REGISTRY_KEY] = CallRegistry()
    return found


async def _read_body(request: Request) -> bytes:
    """The body, refusing to buffer more than an SDP offer can need."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_SDP_BYTES:
        raise OfferError(f"The SDP offer is {length} bytes; the limit is {MAX_SDP_BYTES}.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SDP_BYTES:
            raise OfferError(f"The SDP offer exceeds the {MAX_SDP_BYTES} byte limit.")
    return bytes(body)


def _authorize(request: Request, state: AppState) -> JSONResponse | None:
    if not origin_allowed(request.headers.get("origin"), request.headers.get("host"),
                          state.settings.allowed_origins):
        return _error(403, "This Origin is not allowed to start calls.", "origin_not_allowed")
    key = bearer(request.headers)
    if not state.auth.accepts(key):
        return _error(401, "Missing API key." if key is None else "Incorrect API key provided.", "invalid_api_key")
    return None


async def create_call(request: Request) -> Response:
    state: AppState = request.app.state.voicebot
    if (refused := _authorize(request, state)) is not None:
        return refused
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/sdp":
        return _error(400, f"Content-Type must be application/sdp (got {content_type or 'none'}): "
                      "POST the SDP offer as the body.", "invalid_content_type")
    calls = registry(state)
    try:
        offer = parse_offer(await _read_body(request))
        calls.check_offer(offer)
    except OfferError as err:
        return _error(400, str(err), "invalid_offer")
    except ClientDisconnect:
        return _error(400, "The client went away before sending the whole offer.", "invalid_offer")
    if len(calls.calls) >= state.settings.webrtc_max_calls:
        return _error(503, f"The server is at its limit of {state.settings.webrtc_max_calls} calls; "
                      "try again later.", "too_many_calls")
    session_kwargs: dict[str, Any] = {"model": request.query_params.get("model") or "voicebot"}
    if conversation_id := request.query_params.get("conversation"):
        conversation = state.conversations.get(conversation_id)
        if conversation is None:
            return _error(404, f"Conversation '{conversation_id}' does not exist.", "conversation_not_found")
        session_kwargs["conversation"] = conversation
    try:
        call = RtcCall(state, offer, session_kwargs)
    except IceConfigError as err:
        log.error("WebRTC is misconfigured: %s", err)
        return _error(500, f"The server's ICE configuration is invalid: {err}", "server_misconfigured")
    state.sessions.add(call.session)
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            answer = await call.answer()
    except Exception as exc:
        call.stop(f"could not answer: {exc}")
        await call.teardown()
        if isinstance(exc, TimeoutError):
            return _error(503, "Answering the offer took too long.", "answer_timeout")
        detail = str(exc) or type(exc).__name__
        return _error(400, f"The offer cannot be answered: {detail}", "invalid_offer")
    calls.start(call)
    log.info("call %s: answered (%s%s)", call.id, "/".join(offer.codecs),
             ", oai-events" if offer.has_data_channel else ", no data channel")
    return Response(answer, status_code=201, media_type="application/sdp",
                    headers={"Location": f"/v1/realtime/calls/{call.id}"})


async def hangup(request: Request) -> Response:
    """``POST /v1/realtime/calls/{call_id}/hangup``, as in the hosted API."""
    state: AppState = request.app.state.voicebot
    if (refused := _authorize(request, state)) is not None:
        return refused
    call_id = request.path_params["call_id"]
    calls = registry(state)
    call = calls.calls.get(call_id)
    if call is None:
        if call_id in calls.ended:
            return _error(400, f"Call {call_id} has already ended ({calls.ended[call_id]}).", "call_ended")
        return _error(404, f"Call '{call_id}' does not exist.", "call_not_found")
    await calls.end(call, "hung up")
    return Response(status_code=200)


async def offer_on_call(request: Request) -> Response:
    """A new offer on an existing call: renegotiation is not supported; a closed call says so."""
    state: AppState = request.app.state.voicebot
    if (refused := _authorize(request, state)) is not None:
        return refused
    call_id = request.path_params["call_id"]
    calls = registry(state)
    if call_id in calls.ended:
        return _error(400, f"Call {call_id} has ended ({calls.ended[call_id]}); POST a new offer to "
                      "/v1/realtime/calls to start a new call.", "call_ended")
    if call_id in calls.calls:
        return _error(400, f"Call {call_id} is active and renegotiation is not supported; hang up and "
                      "start a new call.", "renegotiation_not_supported")
    return _error(404, f"Call '{call_id}' does not exist.", "call_not_found")


routes = [
    Route("/v1/realtime/calls", create_call, methods=["POST"]),
    Route("/v1/realtime/calls/{call_id}/hangup", hangup, methods=["POST"]),
    Route("/v1/realtime/calls/{call_id}", offer_on_call, methods=["POST"]),
]


async def close_calls(state: AppState) -> None:
    """At shutdown: end every call (peer connection, session, tasks) before the engines go."""
    found = state.extras.get(REGISTRY_KEY)
    if isinstance(found, CallRegistry):
        await found.aclose()
