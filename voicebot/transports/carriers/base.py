"""What every carrier's media stream means, independent of its wire format (sans-I/O).

A serializer turns one WebSocket message from a carrier into zero or more :data:`CarrierEvent`
values, and our outbound audio, marks and clears into that carrier's messages. Everything else
(pacing, barge-in, the Session) is shared in :mod:`voicebot.transports.telephony`, so adding a
carrier means writing one small serializer.

A malformed message raises :class:`BadFrame`; the bridge logs it and carries on with the call.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from voicebot.core import safe_json
from voicebot.core.audio import AudioFormat
from voicebot.errors import VoicebotError

#: Digits a telephone keypad can send (RFC 4733 events 0-15).
DTMF_DIGITS = frozenset("0123456789*#ABCD")

Outbound = str | bytes  # a text or a binary WebSocket message


class BadFrame(VoicebotError):
    """A carrier message we cannot use. The call goes on without it."""


@dataclass(frozen=True, slots=True)
class Start:
    """The stream is up: who is calling, in which audio format, with which custom parameters."""

    stream_id: str
    call_id: str
    fmt: AudioFormat
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Media:
    audio: bytes  # in the Start's format


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class MarkAck:
    """The carrier played everything sent before the mark with this name."""

    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    reason: str = "stop"


CarrierEvent = Start | Media | Dtmf | MarkAck | Stop


class Serializer(Protocol):
    """One carrier's wire format. Stateful (stream id, reorder buffer): one per call."""

    carrier: str

    def parse(self, message: Outbound) -> list[CarrierEvent]:
        """Events in this message (none for keep-alives and acknowledgements); raise BadFrame."""
        ...

    def media(self, audio: bytes) -> Outbound: ...

    def mark(self, name: str) -> Outbound: ...

    def clear(self) -> Outbound: ...


# --- helpers shared by the JSON carriers --------------------------------------------------------


def load_json(message: Outbound) -> dict[str, Any]:
    if isinstance(message, bytes):
        raise BadFrame(f"unexpected binary message of {len(message)} bytes")
    try:
        value = safe_json.loads(message)
    except safe_json.JsonError as exc:
        raise BadFrame(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadFrame("a message must be a JSON object")
    return value


def obj(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadFrame(f"'{name}' must be an object")
    return value


def text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadFrame(f"'{name}' must be a non-empty string")
    return value


def b64_audio(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise BadFrame(f"'{name}' must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadFrame(f"'{name}' is not valid base64") from None


def seq_number(value: Any) -> int:
    """Carriers send sequence numbers as decimal strings."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadFrame(f"bad sequence number {value!r}") from None


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def digit(value: Any) -> str:
    if not isinstance(value, str) or value not in DTMF_DIGITS:
        raise BadFrame(f"unknown DTMF digit {value!r}")
    return value


# --- reordering -----------------------------------------------------------------------------------

T = TypeVar("T")


class Reorderer(Generic[T]):
    """Release sequenced messages in order, waiting at most ``depth`` messages for a gap.

    Telnyx does not guarantee frame order. Holding a few frames (``depth`` x 20 ms) restores it
    at a bounded latency cost; a frame that never comes (lost) is skipped once the buffer is
    full, and one that arrives after its turn was given up is dropped: playing it late would
    put a click in the middle of later speech.
    """

    def __init__(self, depth: int = 4) -> None:
        self.depth = depth
        self.next: int | None = None
        self.held: dict[int, T] = {}
        self.dropped = 0  # late or duplicate
        self.skipped = 0  # sequence numbers that never arrived

    def push(self, seq: int, value: T) -> list[T]:
        if self.next is None:
            self.next = seq
        if seq < self.next or seq in self.held:
            self.dropped += 1
            return []
        self.held[seq] = value
        out = self._drain()
        if len(self.held) > self.depth:
            lowest = min(self.held)
            self.skipped += lowest - self.next
            self.next = lowest
            out += self._drain()
        return out

    def flush(self) -> list[T]:
        """Everything held, in order (end of the stream)."""
        out = [self.held[s] for s in sorted(self.held)]
        self.held.clear()
        return out

    def _drain(self) -> list[T]:
        out: list[T] = []
        assert self.next is not None
        while self.next in self.held:
            out.append(self.held.pop(self.next))
            self.next += 1
        return out
