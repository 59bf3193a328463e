"""Vonage Voice API WebSocket (NCCO ``connect`` to a ``websocket`` endpoint).

Audio is binary: 16-bit little-endian linear PCM, mono, 20 ms per frame, at the rate the
``websocket:connected`` event names (``audio/l16;rate=16000`` or ``8000``); we answer in the
same format. Text frames are JSON events. Vonage has no marks, but its ``notify`` action is one:
``{"action": "notify", "payload": {...}}`` comes back as ``websocket:notify`` with that payload
once the audio before it has played. ``{"action": "clear"}`` drops the audio it buffers.
Custom NCCO ``headers`` arrive in ``websocket:connected`` and become the call's parameters.
"""

from __future__ import annotations

import re
from typing import Any

from voicebot.core.audio import AudioFormat
from voicebot.transports.carriers.base import (
    BadFrame,
    CarrierEvent,
    Dtmf,
    MarkAck,
    Media,
    Outbound,
    Start,
    Stop,
    digit,
    dumps,
    load_json,
    obj,
    text,
)

_CONTENT_TYPE = re.compile(r"^audio/l16;\s*rate=(8000|16000)$", re.IGNORECASE)


class VonageSerializer:
    carrier = "vonage"

    def __init__(self) -> None:
        self.fmt: AudioFormat | None = None

    def parse(self, message: Outbound) -> list[CarrierEvent]:
        if isinstance(message, bytes):
            if self.fmt is None:
                raise BadFrame("audio before 'websocket:connected'")
            if len(message) % 2:
                raise BadFrame(f"L16 frame of odd length {len(message)}")
            return [Media(message)]
        msg = load_json(message)
        kind = msg.get("event")
        match kind:
            case "websocket:connected":
                return [self._start(msg)]
            case "websocket:notify":
                payload = obj(msg.get("payload"), "payload")
                return [MarkAck(text(payload.get("name"), "payload.name"))]
            case "websocket:dtmf":
                return [Dtmf(digit(msg.get("digit", obj(msg.get("dtmf", {}), "dtmf").get("digit"))))]
            case "websocket:cleared" | "websocket:media:error":
                return []
            case "websocket:disconnected" | "stop":
                return [Stop(str(kind))]
        raise BadFrame(f"unknown event {kind!r}")

    def _start(self, msg: dict[str, Any]) -> Start:
        content_type = text(msg.get("content-type"), "content-type")
        match = _CONTENT_TYPE.match(content_type.replace(" ", ""))
        if match is None:
            raise BadFrame(f"unsupported content-type {content_type!r} (audio/l16;rate=8000 or 16000)")
        if self.fmt is not None:
            raise BadFrame("a second 'websocket:connected'; the call keeps its first format")
        self.fmt = AudioFormat("pcm16", int(match.group(1)))
        params = {str(k): str(v) for k, v in msg.items() if k not in ("event", "content-type")
                  and isinstance(v, str | int | float)}
        return Start(str(msg.get("uuid", "")), str(msg.get("uuid", "")), self.fmt, params)

    def media(self, audio: bytes) -> Outbound:
        return audio

    def mark(self, name: str) -> Outbound:
        return dumps({"action": "notify", "payload": {"name": name}})

    def clear(self) -> Outbound:
        return dumps({"action": "clear"})
