"""What a client can configure with ``session.update``, and how it looks on the wire.

Pure functions over a frozen :class:`SessionConfig`: parsing a GA (or beta-shaped) update into a
new config, and rendering the config as the ``session`` object of ``session.created/updated``.
Every invalid value becomes a :class:`ProtocolError` naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from voicebot.core import events as ev
from voicebot.core.audio import AudioFormat
from voicebot.core.context import AUTO_RETENTION_RATIO
from voicebot.core.endpoint import EndpointConfig, EndpointConfigError
from voicebot.core.turns import TurnPolicy
from voicebot.core.types import TOOL_CHOICE_MODES, Tool, ToolChoice
from voicebot.errors import ProtocolError

PCM24K = AudioFormat("pcm16", 24_000)
#: semantic_vad: eagerness -> (silence that ends a turn that sounds complete, silence that ends
#: one the turn model hears as unfinished). The base stays above 0.6 s so a person pausing
#: mid-sentence is not answered in the pause (the model alone cannot promise that; see
#: core/endpoint.py), and the reply is prepared during that silence, so it costs little.
SEMANTIC_SILENCE_MS = {"low": (1100, 1800), "medium": (750, 1100), "auto": (750, 1100), "high": (500, 800)}
#: server_vad's silence when the client does not name one (the Realtime API's default).
SERVER_VAD_SILENCE_MS = 500
#: When, in the pause, the turn model is asked (it answers in ~60 ms, before the base silence ends).
JUDGE_AFTER_MS = 256
Modality = Literal["audio", "text"]
Eagerness = Literal["low", "medium", "high", "auto"]


def semantic_vad(eagerness: Eagerness = "auto", base: EndpointConfig | None = None) -> EndpointConfig:
    silence, incomplete = SEMANTIC_SILENCE_MS[eagerness]
    return replace(base or EndpointConfig(), silence_duration_ms=silence, judge_after_ms=JUDGE_AFTER_MS,
                   incomplete_silence_ms=incomplete)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a client can change with ``session.update``."""

    instructions: str
    output_modalities: tuple[Modality, ...] = ("audio",)
    input_format: AudioFormat = PCM24K
    output_format: AudioFormat = PCM24K
    transcription: dict[str, Any] | None = field(default_factory=lambda: {"model": "whisper", "language": None})
    vad: EndpointConfig | None = field(default_factory=semantic_vad)  # None = the client commits
    policy: TurnPolicy = field(default_factory=TurnPolicy)
    vad_type: Literal["server_vad", "semantic_vad"] = "semantic_vad"
    eagerness: Eagerness = "auto"
    voice: str = "joe"
    speed: float = 1.0
    max_output_tokens: int | Literal["inf"] = "inf"
    temperature: float | None = None
    truncation: str | dict[str, Any] = "auto"  # "auto", "disabled" or a retention_ratio object, as sent
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "auto"  # auto | none | required | the one function's name

    @property
    def retention_ratio(self) -> float | None:
        """How much of the context a cut keeps (core/context.py); None = never cut ("disabled")."""
        if self.truncation == "disabled":
            return None
        if isinstance(self.truncation, dict):
            return float(self.truncation["retention_ratio"])
        return AUTO_RETENTION_RATIO

    def turn_detection_wire(self) -> dict[str, Any] | None:
        if self.vad is None:
            return None
        if self.vad_type == "semantic_vad":
            return {"type": "semantic_vad", "eagerness": self.eagerness,
                    "create_response": self.policy.create_response,
                    "interrupt_response": self.policy.interrupt_response}
        return {
            "type": self.vad_type,
            "threshold": self.vad.threshold,
            "prefix_padding_ms": self.vad.prefix_padding_ms,
            "silence_duration_ms": self.vad.silence_duration_ms,
            "create_response": self.policy.create_response,
            "interrupt_response": self.policy.interrupt_response,
            "idle_timeout_ms": None,
        }


def session_wire(c: SessionConfig, session_id: str, model: str) -> dict[str, Any]:
    """The GA ``session`` object of ``session.created`` / ``session.updated``."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": list(c.output_modalities),
        "instructions": c.instructions,
        "audio": {
            "input": {
                "format": c.input_format.to_wire(),
                "transcription": c.transcription,
                "turn_detection": c.turn_detection_wire(),
                "noise_reduction": None,
            },
            "output": {"format": c.output_format.to_wire(), "voice": c.voice, "speed": c.speed},
        },
        "max_output_tokens": c.max_output_tokens,
        "tools": tools_wire(c.tools),
        "tool_choice": tool_choice_wire(c.tool_choice),
        "tracing": None,
        "truncation": c.truncation,
        "prompt": None,
        "include": None,
    }


def apply_update(c: SessionConfig, s: ev.SessionConfig, event_id: str | None) -> SessionConfig:
    """The config after a ``session.update`` (fields not mentioned keep their values)."""
    changes: dict[str, Any] = {}
    if s.instructions is not None:
        changes["instructions"] = s.instructions
    modalities = s.output_modalities or s.modalities
    if modalities:
        if len(set(modalities)) > 1:
            raise ProtocolError("output_modalities must be ['audio'] or ['text'], not both.",
                                param="session.output_modalities", event_id=event_id)
        changes["output_modalities"] = tuple(dict.fromkeys(modalities))
    audio_in = s.audio.input if s.audio else None
    audio_out = s.audio.output if s.audio else None
    in_fmt = audio_in.format if audio_in and audio_in.format is not None else s.input_audio_format
    out_fmt = audio_out.format if audio_out and audio_out.format is not None else s.output_audio_format
    if in_fmt is not None:
        changes["input_format"] = _parse_format(in_fmt, "session.audio.input.format", event_id)
    if out_fmt is not None:
        changes["output_format"] = _parse_format(out_fmt, "session.audio.output.format", event_id)
    fields_set = audio_in.model_fields_set if audio_in else set()
    if "transcription" in fields_set or "input_audio_transcription" in s.model_fields_set:
        t = audio_in.transcription if audio_in and "transcription" in fields_set else s.input_audio_transcription
        changes["transcription"] = None if t is None else {"model": t.model or "whisper", "language": t.language}
    if "turn_detection" in fields_set or "turn_detection" in s.model_fields_set:
        td = audio_in.turn_detection if audio_in and "turn_detection" in fields_set else s.turn_detection
        try:
            changes.update(_turn_detection(td, c))
        except EndpointConfigError as exc:  # the schema's ranges should have caught it; never end the session
            raise ProtocolError(f"Invalid turn_detection: {exc}.", param="session.audio.input.turn_detection",
                                event_id=event_id) from None
    voice = audio_out.voice if audio_out and audio_out.voice else s.voice
    if voice:
        changes["voice"] = voice
    if audio_out and audio_out.speed is not None:
        changes["speed"] = audio_out.speed
    max_tokens = s.max_output_tokens if s.max_output_tokens is not None else s.max_response_output_tokens
    if max_tokens is not None:
        changes["max_output_tokens"] = max_tokens
    if s.temperature is not None:
        changes["temperature"] = s.temperature
    if s.tools is not None:
        changes["tools"] = parse_tools(s.tools)
    if s.tool_choice is not None:
        changes["tool_choice"] = parse_tool_choice(s.tool_choice)
    if "tools" in changes or "tool_choice" in changes:
        check_tool_choice(changes.get("tools", c.tools), changes.get("tool_choice", c.tool_choice),
                          "session.tool_choice", event_id)
    if s.truncation is not None:
        changes["truncation"] = s.truncation if isinstance(s.truncation, str) else {
            "type": "retention_ratio", "retention_ratio": s.truncation.retention_ratio}
    return replace(c, **changes)


def response_tools(c: SessionConfig, p: ev.ResponseParams) -> tuple[tuple[Tool, ...], ToolChoice]:
    """The tools and choice of one response: its own if ``response.create`` names them, else the session's."""
    tools = parse_tools(p.tools) if p.tools is not None else c.tools
    return tools, parse_tool_choice(p.tool_choice) if p.tool_choice is not None else c.tool_choice


def offered_tools(tools: tuple[Tool, ...], choice: ToolChoice) -> tuple[Tool, ...]:
    """What the model is offered (part of its prompt): nothing when ``tool_choice`` is ``none``."""
    return tools if choice != "none" else ()


def parse_tools(tools: list[ev.FunctionTool]) -> tuple[Tool, ...]:
    return tuple(Tool(t.name, t.description or "", t.parameters) for t in tools)


def parse_tool_choice(choice: ev.ToolChoiceParam) -> ToolChoice:
    return choice if isinstance(choice, str) else choice.name


def check_tool_choice(tools: tuple[Tool, ...], choice: ToolChoice, param: str, event_id: str | None) -> None:
    """A forced function must be one of the declared tools; ``required`` needs some tool."""
    names = {t.name for t in tools}
    if len(names) < len(tools):
        raise ProtocolError("Two tools have the same name.", param=param.replace("tool_choice", "tools"),
                            event_id=event_id)
    if choice == "required" and not tools:
        raise ProtocolError("tool_choice 'required' needs at least one tool.", param=param, event_id=event_id)
    if choice not in TOOL_CHOICE_MODES and choice not in names:
        raise ProtocolError(f"tool_choice names the function '{choice}', which is not among the tools.",
                            param=param, event_id=event_id)


def tools_wire(tools: tuple[Tool, ...]) -> list[dict[str, Any]]:
    return [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
            for t in tools]


def tool_choice_wire(choice: ToolChoice) -> str | dict[str, str]:
    return choice if choice in TOOL_CHOICE_MODES else {"type": "function", "name": choice}


def _parse_format(value: object, param: str, event_id: str | None) -> AudioFormat:
    try:
        return AudioFormat.parse(value)
    except Exception as exc:
        raise ProtocolError(str(exc), param=param, event_id=event_id) from None


def _turn_detection(td: ev.TurnDetection | None, c: SessionConfig) -> dict[str, Any]:
    if td is None:
        return {"vad": None}
    base = c.vad or EndpointConfig()
    voice = replace(
        base,
        threshold=td.threshold if td.threshold is not None else base.threshold,
        prefix_padding_ms=td.prefix_padding_ms if td.prefix_padding_ms is not None else base.prefix_padding_ms,
    )
    policy = TurnPolicy(
        create_response=td.create_response if td.create_response is not None else True,
        interrupt_response=td.interrupt_response if td.interrupt_response is not None else True,
    )
    if td.type == "semantic_vad":
        eagerness = td.eagerness or "auto"
        return {"vad": semantic_vad(eagerness, voice), "policy": policy, "vad_type": td.type, "eagerness": eagerness}
    # server_vad: exactly the client's silence, no turn model (the Realtime API's defaults otherwise).
    silence = td.silence_duration_ms
    if silence is None:  # kept from an earlier server_vad, else the Realtime API's default
        silence = base.silence_duration_ms if c.vad_type == "server_vad" and c.vad else SERVER_VAD_SILENCE_MS
    vad = replace(voice, judge_after_ms=0, incomplete_silence_ms=0, silence_duration_ms=silence)
    return {"vad": vad, "policy": policy, "vad_type": td.type}
