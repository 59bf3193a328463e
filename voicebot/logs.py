"""Log lines that say whose they are, and never carry a secret.

**Ids.** A Session binds its ``session_id``, ``conversation_id`` and ``transport`` (and a reply its
``response_id``) to context variables where its work runs (:func:`bind`). asyncio copies the
context into every task at its creation and ``asyncio.to_thread`` into the worker thread, so every
line logged from inside a session carries them: as a ``[sess_… resp_…]`` prefix in text, as fields
in JSON (``--log-format json``: one object per line).

**Secrets.** Every record passes :class:`Redact` on the way out, whoever logged it (uvicorn's
access and WebSocket lines print the request path with its query string, where ``?token=`` lives):
``token=``/``key=`` query values, bearer credentials, ``ek_`` client tokens and the configured
keys themselves become ``[redacted]``. Audio is never logged: nothing formats sample buffers.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import json
import logging
import re
import sys
import weakref
from collections.abc import Iterable
from typing import Any

#: The ids a log line can carry, in the order the text prefix shows them.
FIELDS = ("session_id", "response_id", "conversation_id", "transport")
_vars: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"voicebot_{name}", default=None) for name in FIELDS
}
REDACTED = "[redacted]"
#: Libraries whose debug lines dump what goes over the wire — WebSocket frames (audio, text), STUN
#: messages (ICE passwords), HTTP requests to a remote LLM — kept at INFO or above.
QUIET = ("websockets", "aioice", "aiortc", "httpcore", "openai")
#: Credentials that can appear in text someone logs: query parameters, headers, client tokens.
_PATTERNS = (
    re.compile(r"(?i)([?&](?:token|api[_-]?key|key|secret|client_secret)=)[^&\s\"']+"),
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"(openai-insecure-api-key\.)[^\s\"',]+"),
    re.compile(r"()\bek_[A-Za-z0-9_-]{8,}"),
)


def bind(**ids: str | None) -> None:
    """Set ids for the current context (and every task or thread started from it from now on)."""
    for name, value in ids.items():
        _vars[name].set(value)


def context(**ids: str | None) -> contextvars.Context:
    """A copy of the current context with ``ids`` bound: for a task that must carry them whoever
    starts it (a callback of a media library has a context of its own)."""
    ctx = contextvars.copy_context()
    ctx.run(bind, **ids)
    return ctx


def current() -> dict[str, str]:
    """The ids bound where the caller runs (only those that are set)."""
    return {name: value for name, var in _vars.items() if (value := var.get()) is not None}


class Redact(logging.Filter):
    """Rewrites each record's message with every secret in it replaced (and adds the context ids)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first: a key that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        for name, value in current().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


#: Connections (their ASGI tasks) whose WebSocket handshake was refused on purpose.
_refused: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def handshake_refused() -> None:
    """Called by the task that refuses a WebSocket handshake with an HTTP response (see RefusalNoise)."""
    if (task := asyncio.current_task()) is not None:
        _refused.add(task)


class RefusalNoise(logging.Filter):
    """Drops uvicorn's false "ASGI callable returned without completing handshake." after a
    WebSocket handshake we refused on purpose (401/403/429/503 with a JSON body).

    uvicorn 0.54's websockets-sansio and wsproto protocols log it at ERROR whenever the app sends
    a denial response instead of accepting (Kludex/uvicorn#3138); nothing is wrong and no 500 is
    sent. Only the line from a connection that :func:`handshake_refused` marked is dropped: the
    same message after anything else (an endpoint that really returned without answering) still
    gets through.
    """

    SPURIOUS = "ASGI callable returned without completing handshake."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "uvicorn.error" or record.getMessage() != self.SPURIOUS:
            return True
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop: not from a connection
            return True
        if task is None or task not in _refused:
            return True
        _refused.discard(task)
        return False


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: [sess_… resp_…] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        ids = [str(v) for name in ("session_id", "response_id") if (v := getattr(record, name, None))]
        line = super().formatMessage(record)
        if not ids:
            return line
        head, sep, message = line.partition(": ")
        return f"{head}{sep}[{' '.join(ids)}] {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the ids that are known, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """The process's logging: one stderr handler on the root logger, which uvicorn's loggers
    (``uvicorn.error``, ``uvicorn.access``) reach too (run uvicorn with ``log_config=None``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RefusalNoise())
    handler.addFilter(Redact(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    for name in QUIET:  # even at --log-level debug
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
