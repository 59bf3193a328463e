"""The process-wide state every transport shares: settings, engines, who may connect, and registries.

Transports import this module (never ``server.py``, which only assembles the app), so the
dependencies run one way: server -> transports -> state -> conversations / session -> engines -> core.
The server's lifespan builds one :class:`AppState` and puts it at ``app.state.voicebot``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from voicebot.auth import Authenticator
from voicebot.calls import CallRegistry
from voicebot.config import Settings
from voicebot.conversation_hub import ConversationHub
from voicebot.core.conversation import Conversation
from voicebot.core.ratelimit import RateLimiter
from voicebot.engines.base import Engines
from voicebot.errors import HttpError
from voicebot.metrics import Metrics
from voicebot.redis_store import RedisStore
from voicebot.session import Session

log = logging.getLogger(__name__)

#: How often a draining server looks whether the replies in flight are done.
DRAIN_POLL_S = 0.1
#: How long a shutdown waits for the WebSockets and streams it told to end.
GOODBYE_TIMEOUT_S = 3.0
#: What a closing WebSocket, a last SSE event and a hung-up call say.
SHUTDOWN_REASON = "server shutting down"


class Departing(Protocol):
    """A long-lived connection that must be told to end at shutdown (a realtime WebSocket)."""

    def go_away(self, reason: str) -> None: ...


@dataclass(eq=False)
class Seat:
    """A place among --max-sessions (and its owner's --max-sessions-per-key), held from the
    handshake until the session ends; :meth:`release` is idempotent."""

    owner: str | None
    _seats: set[Seat]

    def release(self) -> None:
        self._seats.discard(self)


@dataclass
class AppState:
    settings: Settings
    engines: Engines
    auth: Authenticator
    hub: ConversationHub
    sessions: set[Session] = field(default_factory=set)  # every live realtime session, any transport
    seats: set[Seat] = field(default_factory=set)  # sessions admitted (being set up, or live): the limits count these
    calls: CallRegistry = field(default_factory=CallRegistry)  # WebRTC and telephony calls
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.time)
    closing: bool = False  # shutting down: not ready for new work (/readyz, 503 shutting_down)
    #: Realtime WebSockets, each told to close (1001) when a shutdown has let its replies finish.
    sockets: set[Departing] = field(default_factory=set)
    completions: int = 0  # chat completions being generated (a shutdown lets them finish too)
    limiter: RateLimiter | None = None  # --rate-limit-per-minute (None = no limit)
    #: --store redis://…: conversations and tokens shared with the other instances (None: memory).
    store: RedisStore | None = None

    @classmethod
    def create(cls, settings: Settings, engines: Engines, store: RedisStore | None = None) -> AppState:
        state = cls(settings, engines, Authenticator(settings.api_keys, store=store),
                    ConversationHub(settings, engines, store=store), store=store)
        state.hub.in_use = state.conversations_in_use
        if settings.rate_limit_per_minute > 0:
            state.limiter = RateLimiter(settings.rate_limit_per_minute)
        state.metrics.watch(state.sessions_by_transport, state.queue_depths)
        return state

    def sessions_by_transport(self) -> dict[str, int]:
        counts = Counter(session.sink.kind for session in self.sessions)
        counts["sse"] = self.hub.listener_count
        return {kind: counts.get(kind, 0) for kind in ("realtime_ws", "webrtc", "telephony", "sse")}

    def conversations_in_use(self) -> set[str]:
        """The conversations live voice sessions are on: never expired while a session is there."""
        return {session.conversation.id for session in self.sessions}

    def queue_depths(self) -> dict[str, int]:
        queues = self.engines.cpu
        return {"asr": queues.asr.waiting, "tts": queues.tts.waiting, "llm": self.engines.llm.waiting}

    def admit_session(self, owner: str | None = None) -> Seat:
        """A seat for one more realtime session (of ``owner``, an API key's fingerprint: see
        ``access.session_owner``), or HttpError 429 (a WebSocket handshake is refused with it).

        The seat counts from this moment, not from when the session exists: a transport awaits
        between the two (the WebSocket accept, reading an SDP offer, a carrier's ``start`` frame),
        and handshakes racing each other must not all get in. The transport releases it when the
        session (or the attempt) ends."""
        limit = self.settings.max_sessions
        if limit and len(self.seats) >= limit:
            raise HttpError(429, f"The server is at its limit of {limit} concurrent sessions; try again later.",
                            "too_many_sessions")
        per_key = self.settings.max_sessions_per_key
        if owner is not None and per_key and sum(1 for seat in self.seats if seat.owner == owner) >= per_key:
            raise HttpError(429, f"This API key already has {per_key} realtime sessions open (tokens it minted "
                            "included); close one or try again later.", "too_many_sessions_for_key")
        seat = Seat(owner, self.seats)
        self.seats.add(seat)
        return seat

    async def resolve_conversation(self, conversation_id: str | None) -> Conversation | None:
        """The conversation a voice session asks to join (``?conversation=ID``), None for a new one.

        The same answer on every transport: an unknown id is refused with 404 ``conversation_not_found``.
        """
        if not conversation_id:
            return None
        return (await self.hub.open(conversation_id)).conversation

    # --- shutdown ------------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Take no new work: /readyz and every new connection or request answer 503 ``shutting_down``.

        Only a flag, so a signal handler may call it (the drain itself runs on the loop)."""
        self.closing = True

    @property
    def replying(self) -> bool:
        """A reply is being made, or still being heard, somewhere (voice sessions, text conversations,
        chat completions)."""
        return bool(self.completions) or any(session.replying for session in self.sessions) or self.hub.replying

    @contextlib.contextmanager
    def generating(self) -> Iterator[None]:
        """Around a chat completion's generation: a graceful shutdown waits for it."""
        self.completions += 1
        try:
            yield
        finally:
            self.completions -= 1

    async def drain(self, grace_s: float, *, give_up: Callable[[], bool] = lambda: False) -> None:
        """Graceful shutdown: refuse new work, let the replies in flight finish (at most ``grace_s``,
        or until ``give_up()``: a second Ctrl-C), then end every WebSocket, SSE stream and call."""
        self.begin_shutdown()
        started = time.monotonic()
        deadline = started + grace_s
        if self.replying:
            log.info("shutting down: waiting up to %g s for the replies in flight", grace_s)
        # Polled: "replying" spans every session and conversation, there is no one event to wait on.
        while self.replying and time.monotonic() < deadline and not give_up():  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL_S)
        if self.replying:
            log.warning("shutting down: replies still running after %.1f s are cut", time.monotonic() - started)
        log.info("shutting down: closing %d session(s), %d call(s), %d event stream(s)", len(self.sessions),
                 len(self.calls.live), self.hub.listener_count)
        for socket in list(self.sockets):
            socket.go_away(SHUTDOWN_REASON)
        self.hub.go_away(SHUTDOWN_REASON)
        await self.calls.aclose(SHUTDOWN_REASON)
        # Until the sockets have closed (the client answers the close frame) and the streams have
        # sent their last event: the server's own shutdown would cut them with 1012 / mid-frame.
        deadline = time.monotonic() + GOODBYE_TIMEOUT_S
        while (self.sockets or self.hub.listener_count) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL_S)

    async def aclose(self) -> None:
        """Shutdown: end every call and session, then every conversation stream."""
        self.closing = True
        await self.calls.aclose()
        for session in list(self.sessions):
            await session.close()
        await self.hub.close()
        if self.store is not None:
            await self.store.aclose()

