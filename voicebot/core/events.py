"""The OpenAI Realtime (GA) wire events: validated parsing of client events, serialisation of server events.

Client events are validated with pydantic models (lenient about extra fields, strict about the
fields we use), so every malformed event becomes a :class:`ProtocolError` naming the event type,
the offending parameter and the client's ``event_id`` — never an exception inside the session.

Server events are plain dicts built by the session. Audio payloads travel inside them as raw
``bytes`` so that transports which do not speak JSON (WebRTC tracks, telephony frames) can take
the PCM directly; :func:`dumps` base64-encodes bytes only when the event goes out as JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from voicebot.core import safe_json
from voicebot.errors import ProtocolError

ServerEvent = dict[str, Any]

#: The client's ``event_id`` is echoed in errors: longer ones are refused (the hosted API's ids are ~30).
MAX_EVENT_ID = 512
#: One ``input_audio_buffer.append`` carries at most this much audio (the hosted API's limit).
MAX_APPEND_BYTES = 15 * 1024 * 1024
#: ``max_output_tokens``: 1 or more (0 and negatives would mean "unlimited" to llama.cpp), or "inf".
MaxTokens = Annotated[int, Field(ge=1)] | Literal["inf"]


def new_id(prefix: str) -> str:
    """Ids shaped like the hosted API's (``item_…``, ``resp_…``, ``event_…``)."""
    return f"{prefix}_{secrets.token_urlsafe(12).replace('-', 'x').replace('_', 'y')}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# --- session configuration (GA shape, with the beta aliases old clients still send) -------------


class TurnDetection(_Model):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(default=None, gt=0.0, lt=1.0)  # what the endpointer accepts
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=5000)
    silence_duration_ms: int | None = Field(default=None, ge=1, le=10000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class Transcription(_Model):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class AudioInput(_Model):
    format: dict[str, Any] | str | None = None
    transcription: Transcription | None = Field(default=None)
    turn_detection: TurnDetection | None = Field(default=None)
    noise_reduction: dict[str, Any] | None = None


class AudioOutput(_Model):
    format: dict[str, Any] | str | None = None
    voice: str | None = None
    speed: float | None = Field(default=None, ge=0.25, le=4.0)


class AudioConfig(_Model):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class RetentionRatio(_Model):
    type: Literal["retention_ratio"]
    retention_ratio: float = Field(gt=0.0, le=1.0)


#: A function name as the OpenAI APIs accept it.
FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
#: Tools one session may declare (the hosted API's limit).
MAX_TOOLS = 128


class FunctionTool(_Model):
    type: Literal["function"]
    name: FunctionName
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None  # a JSON schema (an object's)


class ToolChoiceFunction(_Model):
    type: Literal["function"]
    name: FunctionName


ToolChoiceParam = Literal["auto", "none", "required"] | ToolChoiceFunction


class SessionConfig(_Model):
    type: Literal["realtime"] | None = None
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = Field(default=None, min_length=1)
    audio: AudioConfig | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    truncation: Literal["auto", "disabled"] | RetentionRatio | None = None
    # Beta-era names, still sent by older clients and bridges.
    modalities: list[Literal["audio", "text"]] | None = None
    input_audio_format: str | None = None
    output_audio_format: str | None = None
    turn_detection: TurnDetection | None = None
    input_audio_transcription: Transcription | None = None
    voice: str | None = None
    max_response_output_tokens: MaxTokens | None = None
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoiceParam | None = None


# --- conversation items ---------------------------------------------------------------------------


class ContentPart(_Model):
    type: Literal["input_text", "input_audio", "output_text", "output_audio", "text", "audio"]
    text: str | None = None
    audio: str | None = None  # base64, in the session's input format
    transcript: str | None = None


class ItemParam(_Model):
    """A conversation item a client sends: a message, a function call, or a call's output.

    One model for the three types (the fields each needs are checked by :func:`check_item`, so
    every missing one is named the same way as a schema error)."""

    id: str | None = Field(default=None, max_length=64)
    type: Literal["message", "function_call", "function_call_output"] = "message"
    role: Literal["user", "assistant", "system"] | None = None
    content: list[ContentPart] | None = Field(default=None, min_length=1)
    status: str | None = None
    call_id: str | None = Field(default=None, min_length=1, max_length=64)
    name: FunctionName | None = None
    arguments: str | None = None  # JSON text of an object
    output: str | None = None  # the function's result, as the client encodes it (JSON or text)


#: The fields each item type needs.
ITEM_FIELDS = {"message": ("role", "content"), "function_call": ("call_id", "name", "arguments"),
               "function_call_output": ("call_id", "output")}


def check_item(item: ItemParam, *, param: str, kind: str, event_id: str | None) -> None:
    for name in ITEM_FIELDS[item.type]:
        if getattr(item, name) is None:
            raise ProtocolError(f"Missing required parameter '{param}.{name}' in '{kind}' "
                                f"(a {item.type} item needs {', '.join(ITEM_FIELDS[item.type])}).",
                                code="missing_required_parameter", param=f"{param}.{name}", event_id=event_id)
    if item.type == "function_call" and item.arguments is not None:
        arguments_object(item.arguments, param=f"{param}.arguments", event_id=event_id)


def arguments_object(text: str, *, param: str, event_id: str | None) -> dict[str, Any]:
    """A function call's arguments: JSON text of one object, or a ProtocolError naming ``param``."""
    try:
        value = safe_json.loads(text)
    except safe_json.JsonError as exc:
        raise ProtocolError(f"'{param}' is not valid JSON: {exc}.", code="invalid_value", param=param,
                            event_id=event_id) from None
    if not isinstance(value, dict):
        raise ProtocolError(f"'{param}' must be a JSON object.", code="invalid_value", param=param,
                            event_id=event_id)
    return value


class ResponseParams(_Model):
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = Field(default=None, min_length=1)
    modalities: list[Literal["audio", "text"]] | None = None
    max_output_tokens: MaxTokens | None = None
    conversation: Literal["auto", "none"] | None = None  # the GA API knows no other value
    metadata: dict[str, str] | None = None
    input: list[ItemParam] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoiceParam | None = None


# --- client events --------------------------------------------------------------------------------


class _Event(_Model):
    event_id: str | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: SessionConfig


class InputAudioBufferAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class InputAudioBufferCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class OutputAudioBufferClear(_Event):
    type: Literal["output_audio_buffer.clear"]


class ConversationItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: ItemParam
    previous_item_id: str | None = None


class ConversationItemDelete(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ConversationItemRetrieve(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ConversationItemTruncate(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: ResponseParams | None = None


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Annotated[
    SessionUpdate
    | InputAudioBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | OutputAudioBufferClear
    | ConversationItemCreate
    | ConversationItemDelete
    | ConversationItemRetrieve
    | ConversationItemTruncate
    | ResponseCreate
    | ResponseCancel,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)
CLIENT_EVENT_TYPES = frozenset(
    t.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for t in (
        SessionUpdate, InputAudioBufferAppend, InputAudioBufferCommit, InputAudioBufferClear,
        OutputAudioBufferClear, ConversationItemCreate, ConversationItemDelete,
        ConversationItemRetrieve, ConversationItemTruncate, ResponseCreate, ResponseCancel,
    )
)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_field(part: object) -> bool:
    """A parameter's name or index in a validation error's location, not a union member's tag
    (``literal['auto','none']``, ``ToolChoiceFunction``, ``str``)."""
    if isinstance(part, int):
        return True
    return isinstance(part, str) and part.isidentifier() and part.islower() and part not in _TYPE_TAGS


def parse_client_event(raw: str | bytes) -> ClientEvent:
    """Parse and validate one client message; raise :class:`ProtocolError` with a precise message."""
    try:
        data = safe_json.loads(raw)
    except safe_json.JsonError as exc:
        raise ProtocolError(f"The message is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ProtocolError("A client event must be a JSON object.", code="invalid_json")
    event_id = data.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise ProtocolError("'event_id' must be a string.", code="invalid_value", param="event_id")
    if event_id is not None and len(event_id) > MAX_EVENT_ID:
        raise ProtocolError(f"'event_id' is longer than {MAX_EVENT_ID} characters.", code="invalid_value",
                            param="event_id")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("The event has no 'type' string.", code="missing_required_parameter",
                            param="type", event_id=event_id)
    if kind not in CLIENT_EVENT_TYPES:
        raise ProtocolError(f"Unknown client event type '{kind}'.", code="unknown_event_type",
                            param="type", event_id=event_id)
    try:
        # Strict: JSON true is not the number 1, "5" is not 5 (ints still pass as floats).
        event = _ADAPTER.validate_python(data, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"][1:] if _is_field(p)]  # drop the discriminator and union tags
        param = ".".join(loc) or None
        missing = first["type"] == "missing"
        message = (
            f"Missing required parameter '{param}' in '{kind}'."
            if missing
            else f"Invalid value for '{param}' in '{kind}': {first['msg']}."
        )
        raise ProtocolError(
            message,
            code="missing_required_parameter" if missing else "invalid_value",
            param=param,
            event_id=event_id,
        ) from None
    if isinstance(event, ConversationItemCreate):
        check_item(event.item, param="item", kind=kind, event_id=event_id)
    elif isinstance(event, ResponseCreate) and event.response is not None:
        for i, item in enumerate(event.response.input or ()):
            check_item(item, param=f"response.input.{i}", kind=kind, event_id=event_id)
    return event


def decode_audio(b64: str, *, param: str, event_id: str | None) -> bytes:
    """Strict base64 (the SDKs send standard padding); garbage becomes a clear protocol error."""
    if len(b64) > MAX_APPEND_BYTES * 4 // 3 + 4:
        raise ProtocolError(f"'{param}' carries more than {MAX_APPEND_BYTES // (1024 * 1024)} MiB of audio; "
                            "send it in smaller appends.", code="invalid_value", param=param, event_id=event_id)
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"'{param}' is not valid base64 audio.", code="invalid_value",
                            param=param, event_id=event_id) from None


# --- server events --------------------------------------------------------------------------------


def server_event(type: str, **fields: Any) -> ServerEvent:
    return {"type": type, "event_id": new_id("event"), **fields}


def error_event(err: ProtocolError) -> ServerEvent:
    return server_event("error", error=ProtocolError.payload(err))


def audio_delta(response_id: str, item_id: str, data: bytes) -> ServerEvent:
    """``response.output_audio.delta`` carrying raw bytes (base64 only in :func:`dumps`)."""
    return server_event("response.output_audio.delta", response_id=response_id, item_id=item_id,
                        output_index=0, content_index=0, delta=data)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(event: ServerEvent) -> str:
    """Serialise a server event; raw audio bytes become base64 here and only here."""
    return json.dumps(event, default=_json_default, separators=(",", ":"), ensure_ascii=False)
