"""The process-wide state every transport shares: settings, engines, who may connect, and registries.

Transports import this module (never ``server.py``, which only assembles the app), so the
dependencies run one way: server -> transports -> state -> conversations / session -> engines -> core.
The server's lifespan builds one :class:`AppState` and puts it at ``app.state.voicebot``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from voicebot.auth import Authenticator
from voicebot.calls import CallRegistry
from voicebot.config import Settings
from voicebot.conversations import ConversationHub
from voicebot.core.conversation import Conversation
from voicebot.engines.base import Engines
from voicebot.errors import HttpError
from voicebot.metrics import Metrics
from voicebot.session import Session


@dataclass
class AppState:
    settings: Settings
    engines: Engines
    auth: Authenticator
    hub: ConversationHub
    sessions: set[Session] = field(default_factory=set)  # every live realtime session, any transport
    calls: CallRegistry = field(default_factory=CallRegistry)  # WebRTC and telephony calls
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.time)
    closing: bool = False  # shutting down: not ready for new work (/readyz)

    @classmethod
    def create(cls, settings: Settings, engines: Engines) -> AppState:
        state = cls(settings, engines, Authenticator(settings.api_keys), ConversationHub(settings, engines))
        state.metrics.watch(state.sessions_by_transport, state.queue_depths)
        return state

    def sessions_by_transport(self) -> dict[str, int]:
        counts = Counter(session.sink.kind for session in self.sessions)
        counts["sse"] = self.hub.listener_count
        return {kind: counts.get(kind, 0) for kind in ("realtime_ws", "webrtc", "telephony", "sse")}

    def queue_depths(self) -> dict[str, int]:
        queues = self.engines.cpu
        return {"asr": queues.asr.waiting, "tts": queues.tts.waiting}

    def admit_session(self, owner: str | None = None) -> None:
        """Room for one more realtime session (of ``owner``, an API key's fingerprint: see
        ``access.session_owner``), or HttpError 429 (a WebSocket handshake is refused with it)."""
        limit = self.settings.max_sessions
        if limit and len(self.sessions) >= limit:
            raise HttpError(429, f"The server is at its limit of {limit} concurrent sessions; try again later.",
                            "too_many_sessions")
        per_key = self.settings.max_sessions_per_key
        if owner is not None and per_key and sum(1 for s in self.sessions if s.owner == owner) >= per_key:
            raise HttpError(429, f"This API key already has {per_key} realtime sessions open (tokens it minted "
                            "included); close one or try again later.", "too_many_sessions_for_key")

    def resolve_conversation(self, conversation_id: str | None) -> Conversation | None:
        """The conversation a voice session asks to join (``?conversation=ID``), None for a new one.

        The same answer on every transport: an unknown id is refused with 404 ``conversation_not_found``.
        """
        if not conversation_id:
            return None
        return self.hub.get(conversation_id).conversation

    async def aclose(self) -> None:
        """Shutdown: end every call and session, then every conversation stream."""
        self.closing = True
        await self.calls.aclose()
        for session in list(self.sessions):
            await session.close()
        await self.hub.close()

