"""Server-Sent Events, sans-I/O: frame encoding, and the bounded, numbered log that makes resume exact.

The ``text/event-stream`` format (WHATWG HTML, "Server-sent events"): ``id:``, ``event:``, ``data:``
and ``retry:`` fields, one per line, an empty line ends an event; a line starting with ``:`` is a
comment (our heartbeat). Browsers remember the last ``id:`` and send it back as ``Last-Event-ID``
when they reconnect, so numbering events per conversation and keeping the last N of them lets a
client get exactly what it missed.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Any

HEARTBEAT = b": ping\n\n"


def encode_data(data: dict[str, Any]) -> str:
    # json.dumps escapes newlines inside strings, so one event is always one ``data:`` line.
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def sse_frame(event: str | None, data: dict[str, Any] | str, event_id: int | None = None) -> bytes:
    payload = data if isinstance(data, str) else encode_data(data)
    head = f"id: {event_id}\n" if event_id is not None else ""
    if event is not None:
        head += f"event: {event}\n"
    return f"{head}data: {payload}\n\n".encode()


def retry_frame(retry_ms: int) -> bytes:
    return f"retry: {int(retry_ms)}\n\n".encode()


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: int
    event: str
    data: dict[str, Any]
    frame: bytes  # encoded once, written to every listener as is


class EventLog:
    """The last ``capacity`` events with ids 1, 2, 3, … (contiguous, so a resume is one slice)."""

    def __init__(self, capacity: int) -> None:
        self._entries: deque[LogEntry] = deque(maxlen=max(1, capacity))
        self.last_id = 0

    def append(self, event: str, data: dict[str, Any]) -> LogEntry:
        self.last_id += 1
        entry = LogEntry(self.last_id, event, data, sse_frame(event, data, self.last_id))
        self._entries.append(entry)
        return entry

    def since(self, last_id: int) -> list[LogEntry] | None:
        """Entries after ``last_id``; None when the log cannot tell what was missed.

        That is: events after ``last_id`` were already dropped (too old), or ``last_id`` was never
        issued by this log (from the future — e.g. an id from another server process).
        """
        if last_id < 0 or last_id > self.last_id:
            return None
        first = self._entries[0].id if self._entries else self.last_id + 1
        if last_id < first - 1:
            return None
        return list(islice(self._entries, last_id + 1 - first, None))

    @property
    def first_id(self) -> int:
        return self._entries[0].id if self._entries else self.last_id + 1

    def __len__(self) -> int:
        return len(self._entries)


def parse_last_event_id(raw: str | None) -> int | None:
    """No id (a first connection) means "from the start" (0); garbage is None (answered with a reset)."""
    if raw is None or not raw.strip():
        return 0
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)
