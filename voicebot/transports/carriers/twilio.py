"""Twilio Media Streams (bidirectional, ``<Connect><Stream>``): JSON text frames, μ-law 8 kHz.

In: ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``. Out: ``media``, ``mark``,
``clear``, each carrying the ``streamSid`` of the ``start``. A message for another stream is
refused (BadFrame): it is either a bug at the carrier or someone injecting audio.
"""

from __future__ import annotations

import base64
from typing import Any

from voicebot.core.audio import PCMU
from voicebot.transports.carriers.base import (
    BadFrame,
    CarrierEvent,
    Dtmf,
    MarkAck,
    Media,
    Outbound,
    Start,
    Stop,
    b64_audio,
    digit,
    dumps,
    load_json,
    obj,
    text,
)

_ENCODINGS = {"audio/x-mulaw": PCMU}


class TwilioSerializer:
    carrier = "twilio"

    def __init__(self) -> None:
        self.stream_sid: str | None = None

    def parse(self, message: Outbound) -> list[CarrierEvent]:
        msg = load_json(message)
        kind = msg.get("event")
        if kind == "connected":
            return []
        if kind == "start":
            return [self._start(msg)]
        if self.stream_sid is None:
            raise BadFrame(f"'{kind}' before 'start'")
        sid = msg.get("streamSid")
        if sid != self.stream_sid:
            raise BadFrame(f"streamSid {sid!r} is not this call's stream {self.stream_sid!r}")
        match kind:
            case "media":
                media = obj(msg.get("media"), "media")
                track = media.get("track", "inbound")
                if track not in ("inbound", "inbound_track"):
                    return []  # only the caller's side is speech to answer
                return [Media(b64_audio(media.get("payload"), "media.payload"))]
            case "dtmf":
                return [Dtmf(digit(obj(msg.get("dtmf"), "dtmf").get("digit")))]
            case "mark":
                return [MarkAck(text(obj(msg.get("mark"), "mark").get("name"), "mark.name"))]
            case "stop":
                return [Stop()]
        raise BadFrame(f"unknown event {kind!r}")

    def _start(self, msg: dict[str, Any]) -> Start:
        start = obj(msg.get("start"), "start")
        sid = text(start.get("streamSid", msg.get("streamSid")), "start.streamSid")
        fmt_info = obj(start.get("mediaFormat", {"encoding": "audio/x-mulaw"}), "start.mediaFormat")
        encoding = fmt_info.get("encoding")
        if encoding not in _ENCODINGS or fmt_info.get("sampleRate", 8000) != 8000:
            raise BadFrame(f"unsupported media format {fmt_info!r}")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise BadFrame("'start.customParameters' must be an object")
        if self.stream_sid is not None:
            raise BadFrame(f"a second 'start' (stream {sid!r}); the call stays on {self.stream_sid!r}")
        self.stream_sid = sid
        return Start(sid, str(start.get("callSid", "")), _ENCODINGS[encoding],
                     {str(k): str(v) for k, v in params.items()})

    def media(self, audio: bytes) -> Outbound:
        return dumps({"event": "media", "streamSid": self.stream_sid,
                      "media": {"payload": base64.b64encode(audio).decode()}})

    def mark(self, name: str) -> Outbound:
        return dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def clear(self) -> Outbound:
        return dumps({"event": "clear", "streamSid": self.stream_sid})
