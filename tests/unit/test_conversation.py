from __future__ import annotations

import time

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


def texts(conv: Conversation) -> list[str]:
    return [item.text or "" for item in conv.items]


def test_item_cap_evicts_the_oldest_but_never_system_or_in_progress_items() -> None:
    conv = Conversation("c", max_items=4)
    evicted: list[str] = []
    conv.subscribe(lambda kind, item: evicted.append(item.id) if kind == "evicted" else None)
    conv.add(Item("sys", "system", "input_text", text="rules"))
    conv.add(Item("live", "assistant", "output_audio", text="", status="in_progress"))
    for i in range(6):
        conv.add(Item(f"u{i}", "user", "input_text", text=f"m{i}"))
    assert [i.id for i in conv.items] == ["sys", "live", "u4", "u5"]
    assert evicted == ["u0", "u1", "u2", "u3"]
    assert "u0" not in conv and conv.item_count == 4
    with pytest.raises(ProtocolError):
        conv.get("u0")
    assert conv.get("u5").text == "m5"


def test_byte_cap_counts_text_as_it_changes_and_refuses_one_item_too_large() -> None:
    conv = Conversation("c", max_bytes=100)
    for i in range(5):
        conv.add(Item(f"u{i}", "user", "input_text", text="x" * 30))
    assert conv.total_bytes <= 100 and [i.id for i in conv.items] == ["u2", "u3", "u4"]
    # A transcription arriving later counts too (sessions notify "updated" when it does).
    audio = Item("a", "user", "input_audio", text=None)
    conv.add(audio)
    audio.text = "é" * 30  # 60 bytes of UTF-8
    conv.notify("updated", audio)
    assert conv.total_bytes <= 100 and conv.items[-1] is audio and "u3" not in conv
    with pytest.raises(ProtocolError) as err:
        conv.add(Item("big", "user", "input_text", text="y" * 101))
    assert err.value.code == "item_too_large" and "big" not in conv


def test_eviction_keeps_the_llm_views_cut_on_the_items_that_stay() -> None:
    conv = Conversation("c", max_items=6)
    for i in range(6):
        conv.add(Item(f"i{i}", "user" if i % 2 == 0 else "assistant",
                      "input_text" if i % 2 == 0 else "output_text", text=f"turn {i} " + "w" * 200))
    fitted = conv.chat_messages("Be brief.", budget_tokens=300)
    first_kept = fitted[1].content
    assert not first_kept.startswith("turn 0"), "the view has cut the oldest turns"
    conv.add(Item("i6", "user", "input_text", text="next"))  # evicts i0, which the view had cut already
    again = conv.chat_messages("Be brief.", budget_tokens=300)
    assert again[1].content == first_kept, "the cut stays where it was: the prompt cache stays valid"


def test_lookups_by_id_do_not_scan_the_history() -> None:
    conv = Conversation("c")
    for i in range(20_000):
        conv.add(Item(f"u{i}", "user", "input_text", text="x"))
    started = time.perf_counter()
    for _ in range(2000):
        assert "u0" in conv and conv.get("u0").id == "u0"
    # 4000 O(n) scans of 20,000 items would take seconds; a dict answers in a millisecond.
    assert time.perf_counter() - started < 0.5
