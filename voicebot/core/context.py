"""``truncation``: fitting a long conversation into the LLM's context window.

Without it, once the history outgrows the context every reply fails and the conversation dies.
The oldest turns leave, the instructions stay. They leave in a batch, down to
``retention_ratio`` of the room, and the cut then stays where it is while the conversation grows
back: the LLM's prompt cache holds the history from its start, so a cut that moved every turn
would make every reply evaluate the whole history again (seconds on a CPU). So a cut costs one
cold prompt evaluation every so many turns, and the replies between keep their usual latency —
the same reason the Realtime API's ``retention_ratio`` exists.

Tokens are estimated, not counted: a tokenizer round trip per reply would cost more than the
estimate's margin (English runs ~4 characters per token in the BPE vocabularies of the models
we serve; 3 leaves room for names, numbers and other languages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from voicebot.core.types import ChatMessage

CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 8  # the chat template's role markers around each message
#: What "auto" keeps after a cut: three quarters of the room (the rest is growth before the next cut).
AUTO_RETENTION_RATIO = 0.75


def estimate_tokens(messages: Sequence[ChatMessage]) -> int:
    return sum((len(m.content) + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)) // CHARS_PER_TOKEN
               + MESSAGE_OVERHEAD_TOKENS * (1 + len(m.tool_calls)) for m in messages)


@dataclass(frozen=True, slots=True)
class Fitted:
    messages: list[ChatMessage]
    dropped: int  # history messages (after the instructions) left out; pass it back next time


def fit(messages: Sequence[ChatMessage], budget_tokens: int, dropped: int = 0,
        retention_ratio: float = AUTO_RETENTION_RATIO) -> Fitted:
    """``messages`` (instructions first, if any) within ``budget_tokens``.

    ``dropped`` is the cut made last time: it stays unless the history no longer fits. The last
    message is always kept (a reply needs the question), and the history starts with a user turn.
    """
    system = list(messages[:1]) if messages and messages[0].role == "system" else []
    history = list(messages[len(system):])
    dropped = min(dropped, max(0, len(history) - 1))
    room = budget_tokens - estimate_tokens(system)
    kept = estimate_tokens(history[dropped:])
    if kept > room:
        target = room * retention_ratio
        while dropped < len(history) - 1 and (kept > target or history[dropped].role != "user"):
            kept -= estimate_tokens(history[dropped : dropped + 1])
            dropped += 1
    return Fitted(system + history[dropped:], dropped)
