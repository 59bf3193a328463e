"""One exception root for the whole project.

Everything voicebot raises on purpose derives from :class:`VoicebotError`, so callers (the
server, the CLI) can tell "our error, with a message meant for a person" from a bug.
"""

from __future__ import annotations


class VoicebotError(Exception):
    """Root of every error voicebot raises deliberately."""


class ModelError(VoicebotError):
    """An embedded model is missing, incomplete or corrupt; the message names the fix."""


class EngineError(VoicebotError):
    """An engine (ASR, LLM, TTS, VAD) failed at run time, e.g. a remote LLM endpoint is down."""


class ProtocolError(VoicebotError):
    """A client event that cannot be honoured; becomes a Realtime ``error`` event, never a crash.

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
