"""The few value types every layer shares: sample arrays, the engine rate, VAD scores, chat messages.

They live in the core so that the core never imports the engines (engines import the core, and
a Session speaks both without either knowing the other). Defined once; nothing redefines them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

#: Sample rate of everything that goes into the VAD and the ASR.
ENGINE_RATE = 16_000


@dataclass(frozen=True, slots=True)
class VadScores:
    """One VAD hop (``VoiceActivityDetector.hop_samples`` samples at 16 kHz)."""

    fast: bool  # webrtcvad: cheap, instant onset, fooled by noise
    prob: float  # silero: speech probability in [0, 1], robust to noise, slow to rise
    quick: float = 0.0  # WebRTC's RNN detector: rises within 10-50 ms of a voiced onset


Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function the assistant called: the id the answer names, the function, its JSON arguments."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the history as the LLM sees it.

    An assistant message may carry the calls it made (``tool_calls``); a ``tool`` message is one
    call's output, naming the call it answers (``tool_call_id``).
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """The Chat Completions shape (what llama.cpp and every OpenAI-compatible server read)."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [{"id": c.call_id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}}
                                     for c in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the client declared: the model may call it (OpenAI's ``type: "function"`` tool)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "description": self.description}
        function["parameters"] = self.parameters or {"type": "object", "properties": {}}
        return {"type": "function", "function": function}


#: ``auto`` | ``none`` | ``required`` | the name of the one function that must be called.
ToolChoice = str
TOOL_CHOICE_MODES = ("auto", "none", "required")


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call as the LLM streams it (OpenAI's ``delta.tool_calls[i]``).

    The first piece of call ``index`` carries its ``call_id`` and ``name``; every piece may carry
    more of its ``arguments`` text. Concatenated, the arguments are one JSON object.
    """

    index: int
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""


#: What an LLM stream yields: text for the listener, or a piece of a tool call.
LlmPiece = str | ToolCallDelta
