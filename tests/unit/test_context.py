"""truncation "auto": the oldest turns leave in batches, the instructions and the question stay."""

from __future__ import annotations

from voicebot.core.context import AUTO_RETENTION_RATIO, estimate_tokens, fit
from voicebot.core.conversation import Conversation, Item
from voicebot.core.types import ChatMessage

SYSTEM = ChatMessage("system", "You are a helpful voice assistant.")


def turns(n: int) -> list[ChatMessage]:
    out = []
    for i in range(n):
        out += [ChatMessage("user", f"question {i} " + "word " * 20),
                ChatMessage("assistant", f"answer {i} " + "x" * 150)]
    return out


def test_a_history_that_fits_is_untouched() -> None:
    messages = [SYSTEM, *turns(3)]
    fitted = fit(messages, budget_tokens=10_000)
    assert fitted.messages == messages and fitted.dropped == 0


def test_the_oldest_turns_leave_in_one_batch_and_the_cut_then_stays() -> None:
    budget = 1000
    history = [SYSTEM, *turns(40)]
    cuts, dropped = [], 0
    for n in range(2, len(history) + 1, 2):  # the conversation grows a turn at a time
        fitted = fit(history[:n], budget, dropped)
        assert estimate_tokens(fitted.messages) <= budget
        assert fitted.messages[0] == SYSTEM, "the instructions always stay"
        assert fitted.messages[-1] == history[n - 1], "the newest message always stays"
        assert fitted.messages[1].role == "user", "the history starts with a person's turn"
        if fitted.dropped != dropped:
            cuts.append(n)
            assert estimate_tokens(fitted.messages) <= budget * AUTO_RETENTION_RATIO + 100
        dropped = fitted.dropped
    # The prompt cache survives between cuts: far fewer cuts than turns.
    assert 2 <= len(cuts) <= len(history) // 6, cuts


def test_one_huge_message_is_kept_alone_rather_than_dropped() -> None:
    huge = ChatMessage("user", "y" * 30_000)
    fitted = fit([SYSTEM, *turns(2), huge], budget_tokens=500)
    assert fitted.messages == [SYSTEM, huge]


def test_a_conversation_keeps_its_cut_across_replies() -> None:
    conversation = Conversation("conv_1")
    for i, message in enumerate(turns(30)):
        conversation.add(Item(f"item_{i}", message.role, "input_text", text=message.content))
    first = conversation.chat_messages("Be brief.", budget_tokens=800)
    again = conversation.chat_messages("Be brief.", budget_tokens=800)
    assert first == again, "the same view while nothing was added"
    assert first[0].content == "Be brief." and first[-1].content.startswith("answer 29")
    assert len(first) < 61
    pending = conversation.chat_messages("Be brief.", pending="and now?", budget_tokens=800)
    assert pending[-1] == ChatMessage("user", "and now?")
    assert pending[1:-1] == first[1:], "a new turn that fits does not move the cut"
