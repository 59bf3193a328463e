"""``GET /openapi.json``: an OpenAPI 3.1 document of the HTTP API.

Request bodies come from the very pydantic models the endpoints validate with
(``model_json_schema``), so the document cannot promise a field the server would refuse; what
is written here by hand is the list of routes, their statuses and the response shapes. The
WebSocket endpoints (``/v1/realtime``, the carriers' media streams) are described in
docs/protocol.md and docs/telephony.md: OpenAPI has no words for them.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from voicebot import __version__
from voicebot.transports.audio_api import TRANSCRIPTION_FORMATS, SpeechRequest
from voicebot.transports.audio_files import MEDIA_TYPES
from voicebot.transports.chat_completions import ChatRequest
from voicebot.transports.client_secrets import ClientSecretRequest
from voicebot.transports.sse import CreateConversation, PostMessage, StreamRequest

REF = "#/components/schemas/{model}"
BODIES: tuple[type[BaseModel], ...] = (ChatRequest, CreateConversation, PostMessage, StreamRequest,
                                       ClientSecretRequest, SpeechRequest)

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["type", "code", "message"],
        "properties": {"type": {"type": "string"}, "code": {"type": ["string", "null"]},
                       "message": {"type": "string"}, "param": {"type": ["string", "null"]}}}},
}
CONVERSATION = {
    "type": "object", "required": ["id", "object", "created_at", "last_event_id"],
    "properties": {"id": {"type": "string"}, "object": {"const": "conversation"},
                   "created_at": {"type": "integer"}, "instructions": {"type": ["string", "null"]},
                   "last_event_id": {"type": "integer"},
                   "items": {"type": "array", "items": {"$ref": "#/components/schemas/ConversationItem"}}},
}
ITEM = {
    "type": "object", "required": ["item_id", "type", "role", "status", "source"],
    "properties": {"item_id": {"type": "string"},
                   "type": {"enum": ["message", "function_call", "function_call_output"]},
                   "role": {"type": "string"}, "text": {"type": ["string", "null"]},
                   "status": {"type": "string"}, "source": {"enum": ["voice", "text"]},
                   # function_call: call_id, name, arguments (JSON text); function_call_output: call_id, output
                   "call_id": {"type": "string"}, "name": {"type": "string"}, "arguments": {"type": "string"},
                   "output": {"type": "string"}},
}
CONVERSATION_ID = {"name": "conversation_id", "in": "path", "required": True, "schema": {"type": "string"}}
CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}
EVENT_STREAM = {"text/event-stream": {"schema": {"type": "string"}}}
TRANSCRIPTION_FORM = {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "A WAV file: integer PCM, any rate and channel count"},
                   "model": {"type": "string"}, "language": {"type": "string"}, "prompt": {"type": "string"},
                   "response_format": {"enum": list(TRANSCRIPTION_FORMATS)},
                   "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                   "timestamp_granularities[]": {"type": "array", "items": {"enum": ["word", "segment"]}}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    what = {400: "Invalid request", 401: "Missing or wrong API key / token", 403: "Origin not allowed",
            404: "Not found", 413: "Body or text too large", 429: "Over a limit (rate, sessions, conversations)",
            502: "An engine (ASR, TTS) failed", 503: "Still loading, or at a capacity limit"}
    out = {str(s): _json({"$ref": "#/components/schemas/Error"}, what[s]) for s in statuses}
    if 429 in statuses:
        out["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                                 "description": "Seconds to wait (the rate limit)"}}
    return out


def _body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    return {"required": required,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}}


API_ERRORS = (400, 401, 429, 503)


def _paths() -> dict[str, Any]:
    obj = {"type": "object"}
    return {
        "/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion", "summary": "OpenAI-compatible chat completion on the server's LLM",
            "requestBody": _body(ChatRequest),
            "responses": {"200": {"description": "A chat.completion, or chat.completion.chunk events when stream",
                                  "content": {"application/json": {"schema": obj}, **EVENT_STREAM}},
                          **_errors(*API_ERRORS, 413)}}},
        "/v1/audio/transcriptions": {"post": {
            "operationId": "createTranscription", "summary": "OpenAI-compatible speech to text (a WAV upload)",
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": TRANSCRIPTION_FORM}}},
            "responses": {"200": {"description": "The transcript: JSON (json, verbose_json) or text (text, srt, vtt)",
                                  "content": {"application/json": {"schema": obj},
                                              "text/plain": {"schema": {"type": "string"}},
                                              "text/vtt": {"schema": {"type": "string"}}}},
                          **_errors(*API_ERRORS, 413, 502)}}},
        "/v1/audio/speech": {"post": {
            "operationId": "createSpeech", "summary": "OpenAI-compatible text to speech, streamed as it is made",
            "requestBody": _body(SpeechRequest),
            "responses": {"200": {"description": "The audio in response_format, streamed",
                                  "content": {media: {"schema": {"type": "string", "format": "binary"}}
                                              for media in dict.fromkeys(MEDIA_TYPES.values())}},
                          **_errors(*API_ERRORS, 413, 502)}}},
        "/v1/models": {"get": {
            "operationId": "listModels", "summary": "The one model served",
            "responses": {"200": _json(obj, "A list of models"), **_errors(401, 429, 503)}}},
        "/v1/conversations": {"post": {
            "operationId": "createConversation", "summary": "A conversation shared by text (SSE) and voice",
            "requestBody": _body(CreateConversation, required=False),
            "responses": {"201": _json({"$ref": "#/components/schemas/Conversation"}, "Created"),
                          **_errors(*API_ERRORS, 413)}}},
        "/v1/conversations/{conversation_id}": {"get": {
            "operationId": "getConversation", "summary": "Its history, and the event id to resume the stream from",
            "parameters": [CONVERSATION_ID],
            "responses": {"200": _json({"$ref": "#/components/schemas/Conversation"}, "The conversation"),
                          **_errors(401, 404, 429, 503)}}},
        "/v1/conversations/{conversation_id}/messages": {"post": {
            "operationId": "postMessage",
            "summary": "A user message, or a function call's result; the reply follows on the event stream",
            "parameters": [CONVERSATION_ID], "requestBody": _body(PostMessage),
            "responses": {"202": _json(obj, "Accepted"), **_errors(*API_ERRORS, 404, 413)}}},
        "/v1/conversations/{conversation_id}/token": {"post": {
            "operationId": "mintConversationToken", "summary": "A short-lived token for an EventSource URL",
            "parameters": [CONVERSATION_ID],
            "responses": {"200": _json(obj, "The token"), **_errors(401, 404, 429, 503)}}},
        "/v1/conversations/{conversation_id}/events": {
            "get": {"operationId": "streamEvents", "summary": "The resumable event stream (Server-Sent Events)",
                    "parameters": [CONVERSATION_ID,
                                   {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                                   {"name": "last_event_id", "in": "query", "schema": {"type": "string"}},
                                   {"name": "token", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "The stream", "content": EVENT_STREAM},
                                  **_errors(401, 404, 429, 503)}},
            "post": {"operationId": "streamEventsPost", "summary": "The event stream, resumed by a body field",
                     "parameters": [CONVERSATION_ID], "requestBody": _body(StreamRequest, required=False),
                     "responses": {"200": {"description": "The stream", "content": EVENT_STREAM},
                                   **_errors(*API_ERRORS, 404, 413)}}},
        "/v1/realtime/client_secrets": {"post": {
            "operationId": "createClientSecret", "summary": "A short-lived client token (API keys only)",
            "requestBody": _body(ClientSecretRequest, required=False),
            "responses": {"200": _json({"type": "object", "required": ["value", "expires_at"],
                                        "properties": {"value": {"type": "string"},
                                                       "expires_at": {"type": "integer"},
                                                       "session": obj}}, "The secret"),
                          **_errors(*API_ERRORS, 413)}}},
        "/v1/realtime/calls": {"post": {
            "operationId": "createCall", "summary": "WebRTC: an SDP offer in, the SDP answer out",
            "parameters": [{"name": "conversation", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/sdp": {"schema": {"type": "string"}}}},
            "responses": {"201": {"description": "The SDP answer; Location names the call",
                                  "content": {"application/sdp": {"schema": {"type": "string"}}}},
                          **_errors(*API_ERRORS, 403, 404, 413)}}},
        "/v1/realtime/calls/{call_id}/hangup": {"post": {
            "operationId": "hangupCall", "summary": "End a WebRTC call", "parameters": [CALL_ID],
            "responses": {"200": {"description": "Hung up"}, **_errors(400, 401, 403, 404, 429, 503)}}},
        "/healthz": {"get": {"operationId": "healthz", "summary": "Alive", "security": [],
                             "responses": {"200": _json(obj, "Serving"), "503": _json(obj, "Loading")}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "Ready for new work", "security": [],
                            "responses": {"200": _json(obj, "Ready"),
                                          "503": _json(obj, "Loading or shutting down")}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus text format",
                             "responses": {"200": {"description": "Metrics",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **_errors(401, 503)}}},
    }


@functools.cache
def document() -> dict[str, Any]:
    _, defs = models_json_schema([(model, "validation") for model in BODIES], ref_template=REF)
    schemas = {**defs.get("$defs", {}), "Error": ERROR, "Conversation": CONVERSATION, "ConversationItem": ITEM}
    return {
        "openapi": "3.1.0",
        "info": {"title": "voicebot HTTP API", "version": __version__,
                 "description": "The HTTP side of voicebot. The Realtime WebSocket (/v1/realtime) is "
                                "described in docs/protocol.md."},
        "paths": _paths(),
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "An API key or an ek_ client token"}}},
        "security": [{"bearer": []}, {}],  # {}: servers started without API keys need none
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document())


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
