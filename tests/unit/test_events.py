from __future__ import annotations

import json

import pytest

from voicebot.core import events as ev
from voicebot.errors import ProtocolError


def test_parses_every_client_event_type() -> None:
    samples = [
        {"type": "session.update", "session": {"type": "realtime", "instructions": "x"}},
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
        {"type": "input_audio_buffer.commit"},
        {"type": "input_audio_buffer.clear"},
        {"type": "output_audio_buffer.clear"},
        {"type": "conversation.item.create",
         "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}},
        {"type": "conversation.item.delete", "item_id": "i"},
        {"type": "conversation.item.retrieve", "item_id": "i"},
        {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 10},
        {"type": "response.create", "response": {"output_modalities": ["text"]}},
        {"type": "response.cancel"},
    ]
    assert {s["type"] for s in samples} == ev.CLIENT_EVENT_TYPES
    for sample in samples:
        assert ev.parse_client_event(json.dumps(sample)).type == sample["type"]


def test_errors_name_the_problem() -> None:
    with pytest.raises(ProtocolError) as err:
        ev.parse_client_event(json.dumps({"type": "conversation.item.create", "event_id": "x",
                                          "item": {"role": "robot", "content": [{"type": "input_text"}]}}))
    assert err.value.param == "item.role" and err.value.event_id == "x"
    with pytest.raises(ProtocolError) as err:
        ev.parse_client_event(json.dumps({"type": "response.cancel", "event_id": 7}))
    assert err.value.event_id is None
    with pytest.raises(ProtocolError) as err:
        ev.decode_audio("a!b", param="audio", event_id="e")
    assert err.value.code == "invalid_value"


def test_dumps_encodes_audio_bytes_as_base64() -> None:
    out = json.loads(ev.dumps(ev.server_event("response.output_audio.delta", delta=b"\x00\x01")))
    assert out["delta"] == "AAE=" and out["event_id"].startswith("event_")
