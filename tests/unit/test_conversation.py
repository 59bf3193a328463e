from __future__ import annotations

import pytest

from voicebot.core.conversation import Conversation, Item, Segment, heard_text
from voicebot.errors import ProtocolError


def spoken() -> Item:
    item = Item("a1", "assistant", "output_audio", text="Hello there. How are you today?")
    item.append_segment("Hello there.", 1000)
    item.append_segment("How are you today?", 2000)
    item.audio_ms = 3000
    return item


def test_heard_text_whole_partial_and_none() -> None:
    segs = [Segment("Hello there.", 0, 1000), Segment("How are you today?", 1000, 3000)]
    assert heard_text(segs, 3000) == "Hello there. How are you today?"
    assert heard_text(segs, 1000) == "Hello there."
    assert heard_text(segs, 0) == ""
    # Halfway through the second clause: roughly half its words.
    assert heard_text(segs, 2000) == "Hello there. How are"
    assert heard_text(segs, 1050) == "Hello there."


def test_truncate_accepts_any_cut_within_sent_audio_and_can_be_redone() -> None:
    conv = Conversation("c")
    conv.add(Item("u1", "user", "input_text", text="hi"))
    item = spoken()
    conv.add(item)
    assert conv.truncate("a1", 500).text == "Hello"
    # A later, more precise cut (e.g. the client's own count) recomputes from the segments.
    assert conv.truncate("a1", 1000).text == "Hello there."
    assert item.audio_ms == 3000 and item.heard_ms == 1000
    with pytest.raises(ProtocolError) as err:
        conv.truncate("a1", 5000)
    assert err.value.param == "audio_end_ms"
    with pytest.raises(ProtocolError):
        conv.truncate("u1", 0)
    with pytest.raises(ProtocolError) as missing:
        conv.truncate("nope", 0)
    assert missing.value.code == "item_not_found"


def test_insert_positions_delete_and_listeners() -> None:
    conv = Conversation("c")
    seen: list[tuple[str, str]] = []
    unsubscribe = conv.subscribe(lambda kind, item: seen.append((kind, item.id)))
    assert conv.add(Item("a", "user", "input_text", text="1")) is None
    assert conv.add(Item("b", "user", "input_text", text="2")) == "a"
    assert conv.add(Item("c", "user", "input_text", text="0"), "root") is None
    assert conv.add(Item("d", "user", "input_text", text="1.5"), "a") == "a"
    assert [i.id for i in conv.items] == ["c", "a", "d", "b"]
    with pytest.raises(ProtocolError):
        conv.add(Item("a", "user", "input_text", text="dup"))
    with pytest.raises(ProtocolError):
        conv.add(Item("e", "user", "input_text", text="x"), "ghost")
    conv.delete("d")
    unsubscribe()
    conv.delete("c")
    assert seen == [("added", "a"), ("added", "b"), ("added", "c"), ("added", "d"), ("deleted", "d")]


def test_chat_messages_skip_empty_and_pending_items() -> None:
    conv = Conversation("c")
    conv.add(Item("u1", "user", "input_audio", text=None))
    conv.add(Item("u2", "user", "input_audio", text="  what time is it "))
    conv.add(Item("a1", "assistant", "output_audio", text=""))
    conv.add(Item("a2", "assistant", "output_text", text="Noon."))
    msgs = conv.chat_messages("Be brief.")
    assert [(m.role, m.content) for m in msgs] == [("system", "Be brief."), ("user", "what time is it"),
                                                  ("assistant", "Noon.")]


def test_item_wire_shape() -> None:
    wire = spoken().to_wire()
    assert wire["object"] == "realtime.item" and wire["type"] == "message"
    assert wire["content"] == [{"type": "output_audio", "transcript": "Hello there. How are you today?"}]
    assert Item("t", "user", "input_text", text="x").to_wire()["content"] == [{"type": "input_text", "text": "x"}]
