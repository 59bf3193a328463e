"""One exception root for the whole project, and the one shape of every error a client sees.

Everything voicebot raises on purpose derives from :class:`VoicebotError`, so callers (the
server, the CLI) can tell "our error, with a message meant for a person" from a bug.

Errors meant for a client carry the OpenAI error object (``type``, ``code``, ``message``,
``param``): :class:`ProtocolError` becomes a Realtime ``error`` event, :class:`HttpError` an HTTP
status with ``{"error": {...}}``. :meth:`ProtocolError.payload` is the only place that object is
built, so SDKs surface the same fields whichever way the error travels.
"""

from __future__ import annotations

from typing import Any


class VoicebotError(Exception):
    """Root of every error voicebot raises deliberately."""


class ModelError(VoicebotError):
    """An embedded model is missing, incomplete or corrupt; the message names the fix."""


class EngineError(VoicebotError):
    """An engine (ASR, LLM, TTS, VAD) failed at run time, e.g. a remote LLM endpoint is down.

    ``code`` is what the client's ``error`` event says: ``asr_failed``, ``llm_failed``,
    ``tts_failed``, or ``engine_timeout`` for a stall (docs/operations.md "Engine faults").
    """

    def __init__(self, message: str, *, code: str = "engine_error") -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(VoicebotError):
    """A client request that cannot be honoured; becomes an ``error`` event, never a crash.

    ``code`` and ``param`` follow the OpenAI error shape so SDKs surface them unchanged.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_value",
        param: str | None = None,
        event_id: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.event_id = event_id
        self.type = type

    def payload(self) -> dict[str, Any]:
        """The OpenAI error object (a Realtime ``error`` event's ``error`` field)."""
        return {"type": self.type, "code": self.code, "message": self.message, "param": self.param,
                "event_id": self.event_id}


class HttpError(ProtocolError):
    """An HTTP request (or WebSocket handshake) refused with ``status`` and an OpenAI error body."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type: str = "invalid_request_error", *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message, code=code, param=param, type=type)
        self.status = status
        self.headers = headers or {}  # response headers that go with it (e.g. a 429's Retry-After)
        self.extra = extra  # further top-level fields of the body (e.g. the demo page's auth_required)

    def payload(self) -> dict[str, Any]:
        payload = super().payload()
        del payload["event_id"]  # HTTP errors answer a request, not an event
        return payload

    def body(self) -> dict[str, Any]:
        return {"error": self.payload(), **self.extra}
