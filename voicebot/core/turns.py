"""Who holds the floor, and what to do when that changes.

Sans-I/O: the session reports what happened (speech started/stopped, reply started/audible/ended)
and gets back the actions to carry out. Keeping the barge-in rule here, in one table, means every
transport interrupts the same way and the rule is tested without sockets or models. The session
carries the actions out through the transport's output sink (clear = drop what is buffered toward
the listener), so no transport decides anything about a cut.

``output_playing`` is the session's playout clock saying the listener still has audio queued: a
reply that has finished *sending* can still be *heard* for up to ``output_lead_ms``, and talking
over that tail interrupts it like any other (the buffered audio is dropped and the history cut).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TurnState(enum.Enum):
    LISTENING = "listening"  # nobody speaks, no reply under way
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"  # reply under way, nothing audible yet (ASR/LLM/first TTS)
    SPEAKING = "speaking"  # reply audio is going out


class Action(enum.Enum):
    CANCEL_REPLY = "cancel_reply"  # stop LLM + TTS work now
    CLEAR_OUTPUT = "clear_output"  # drop audio queued toward the listener
    TRUNCATE_HISTORY = "truncate_history"  # keep only what was heard of the reply
    COMMIT_INPUT = "commit_input"  # the user's audio becomes a conversation item
    START_REPLY = "start_reply"


@dataclass(frozen=True, slots=True)
class TurnPolicy:
    create_response: bool = True
    interrupt_response: bool = True


class TurnTracker:
    def __init__(self) -> None:
        self.user_speaking = False
        self.reply_active = False
        self.reply_audible = False

    @property
    def state(self) -> TurnState:
        if self.user_speaking:
            return TurnState.USER_SPEAKING
        if self.reply_audible:
            return TurnState.SPEAKING
        if self.reply_active:
            return TurnState.THINKING
        return TurnState.LISTENING

    def speech_started(self, policy: TurnPolicy, *, output_playing: bool = False) -> list[Action]:
        self.user_speaking = True
        if not policy.interrupt_response:
            return []
        return self.interrupted(output_playing=output_playing)

    def interrupted(self, *, output_playing: bool = False) -> list[Action]:
        """The reply must stop now (barge-in, ``response.cancel``, a keypad press): what to do."""
        actions = []
        if self.reply_active:
            actions.append(Action.CANCEL_REPLY)
        if self.reply_active or output_playing:
            actions.append(Action.CLEAR_OUTPUT)
        if self.reply_audible or output_playing:
            actions.append(Action.TRUNCATE_HISTORY)
        return actions

    def speech_stopped(self, policy: TurnPolicy) -> list[Action]:
        self.user_speaking = False
        actions = [Action.COMMIT_INPUT]
        # With interrupt_response off, a reply may still be running: never start a second one.
        if policy.create_response and not self.reply_active:
            actions.append(Action.START_REPLY)
        return actions

    def reply_started(self) -> None:
        self.reply_active = True
        self.reply_audible = False

    def reply_audio_started(self) -> None:
        if self.reply_active:
            self.reply_audible = True

    def reply_ended(self) -> None:
        self.reply_active = False
        self.reply_audible = False
