"""Telnyx media streaming (bidirectional RTP mode): Twilio's event shapes with snake_case ids.

Telnyx does not guarantee frame order, so media frames go through a small :class:`Reorderer`
keyed by ``media.chunk`` (a counter of media frames only: ``sequence_number`` also counts marks
and DTMF, whose order relative to audio does not matter and which must never wait for a gap).
Other events are delivered as they come. PCMU and PCMA are
supported; the codec is whatever ``start.media_format`` says, and we answer in the same one.
Custom parameters come from ``start.custom_parameters`` (TeXML ``<Parameter>``) when present.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from voicebot.core.audio import PCMA, PCMU, AudioFormat
from voicebot.transports.carriers.base import (
    BadFrame,
    CarrierEvent,
    Dtmf,
    MarkAck,
    Media,
    Outbound,
    Reorderer,
    Start,
    Stop,
    b64_audio,
    digit,
    dumps,
    load_json,
    obj,
    seq_number,
    text,
)

log = logging.getLogger(__name__)
_ENCODINGS: dict[str, AudioFormat] = {"PCMU": PCMU, "PCMA": PCMA}
REORDER_DEPTH = 4  # 80 ms of frames: waited for only when one is missing


class TelnyxSerializer:
    carrier = "telnyx"

    def __init__(self, reorder_depth: int = REORDER_DEPTH) -> None:
        self.stream_id: str | None = None
        self.order: Reorderer[CarrierEvent] = Reorderer(reorder_depth)

    def parse(self, message: Outbound) -> list[CarrierEvent]:
        msg = load_json(message)
        kind = msg.get("event")
        if kind == "connected":
            return []
        if kind == "error":
            log.warning("telnyx reported an error: %s", msg.get("payload", msg))
            return []
        if kind == "start":
            event: CarrierEvent = self._start(msg)
        else:
            if self.stream_id is None:
                raise BadFrame(f"'{kind}' before 'start'")
            sid = msg.get("stream_id")
            if sid is not None and sid != self.stream_id:
                raise BadFrame(f"stream_id {sid!r} is not this call's stream {self.stream_id!r}")
            event = self._event(kind, msg)
        if isinstance(event, Stop):
            return [*self.order.flush(), event]
        chunk = msg.get("media", {}).get("chunk") if isinstance(event, Media) else None
        if chunk is None:
            return [event]
        before = self.order.dropped
        released = self.order.push(seq_number(chunk), event)
        if self.order.dropped != before:
            raise BadFrame(f"late or duplicate media chunk {chunk} (its turn had passed)")
        return released

    def _event(self, kind: Any, msg: dict[str, Any]) -> CarrierEvent:
        match kind:
            case "media":
                media = obj(msg.get("media"), "media")
                if media.get("track", "inbound") != "inbound":
                    raise BadFrame(f"media of track {media.get('track')!r} ignored")
                return Media(b64_audio(media.get("payload"), "media.payload"))
            case "dtmf":
                return Dtmf(digit(obj(msg.get("dtmf"), "dtmf").get("digit")))
            case "mark":
                return MarkAck(text(obj(msg.get("mark"), "mark").get("name"), "mark.name"))
            case "stop":
                return Stop()
        raise BadFrame(f"unknown event {kind!r}")

    def _start(self, msg: dict[str, Any]) -> Start:
        start = obj(msg.get("start"), "start")
        sid = text(msg.get("stream_id"), "stream_id")
        fmt_info = obj(start.get("media_format", {"encoding": "PCMU"}), "start.media_format")
        encoding = str(fmt_info.get("encoding", "")).upper()
        if encoding not in _ENCODINGS or fmt_info.get("sample_rate", 8000) not in (8000, "8000"):
            raise BadFrame(f"unsupported media format {fmt_info!r} (PCMU or PCMA at 8000 Hz)")
        params = start.get("custom_parameters") or {}
        if not isinstance(params, dict):
            raise BadFrame("'start.custom_parameters' must be an object")
        if self.stream_id is not None:
            raise BadFrame(f"a second 'start' (stream {sid!r}); the call stays on {self.stream_id!r}")
        self.stream_id = sid
        self.order.next = 1  # chunks count from 1: a swapped first pair is reordered too
        return Start(sid, str(start.get("call_control_id", "")), _ENCODINGS[encoding],
                     {str(k): str(v) for k, v in params.items()})

    def media(self, audio: bytes) -> Outbound:
        return dumps({"event": "media", "media": {"payload": base64.b64encode(audio).decode()}})

    def mark(self, name: str) -> Outbound:
        return dumps({"event": "mark", "mark": {"name": name}})

    def clear(self) -> Outbound:
        return dumps({"event": "clear"})
