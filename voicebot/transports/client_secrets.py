"""Short-lived client tokens for browsers, so a web page never holds the long-lived API key.

``POST /v1/realtime/client_secrets`` mirrors the hosted API's ephemeral keys: a backend that
holds an API key (``Authorization: Bearer KEY``) asks for a token and hands it to its page, which
connects with the subprotocol ``openai-insecure-api-key.<token>``. A token cannot mint tokens.

``POST /v1/demo/client_secret`` is the bundled demo page's way to get one *without* a key. It is
off while API keys are configured unless the operator opts in with ``--demo-page-tokens``
(otherwise the page asks the person to paste a token), and it only answers same-origin browsers,
so another web site cannot borrow a visitor's browser to talk to this server.

Tokens are not bound to a session configuration: the ``session`` a client sends is validated and
then ignored; clients configure the session with ``session.update`` once connected.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from voicebot.auth import bearer, origin_allowed
from voicebot.core import events as ev
from voicebot.session_config import SessionConfig

if TYPE_CHECKING:
    from voicebot.server import AppState

#: The demo page mints a token right before it connects, so it needs only a short one; an open
#: socket stays open after its token expires (as with the hosted API).
DEMO_TOKEN_TTL_S = 120
MAX_REQUEST_BYTES = 64 * 1024


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: str = "created_at"
    seconds: int = Field(default=600, ge=10, le=7200)


class ClientSecretRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    expires_after: ExpiresAfter | None = None
    session: ev.SessionConfig | None = None


def _error(status: int, message: str, code: str, param: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": {"type": "invalid_request_error", "code": code, "message": message,
                                      "param": param}, **extra}
    return JSONResponse(body, status_code=status)


def default_session(state: AppState) -> dict[str, Any]:
    """The configuration a new session starts with (what the token's holder will get)."""
    config = SessionConfig(instructions=state.settings.instructions)
    return {
        "type": "realtime",
        "object": "realtime.session",
        "model": "voicebot",
        "output_modalities": list(config.output_modalities),
        "instructions": config.instructions,
        "audio": {
            "input": {"format": config.input_format.to_wire(), "transcription": config.transcription,
                      "turn_detection": config.turn_detection_wire()},
            "output": {"format": config.output_format.to_wire(), "voice": config.voice},
        },
    }


def _secret(state: AppState, ttl_s: float) -> dict[str, Any]:
    value, expires_at = state.auth.tokens.mint(ttl_s)
    return {"value": value, "expires_at": int(expires_at), "session": default_session(state)}


async def _parse(request: Request) -> ClientSecretRequest | JSONResponse:
    raw = await request.body()
    if len(raw) > MAX_REQUEST_BYTES:
        return _error(413, f"Request body exceeds {MAX_REQUEST_BYTES} bytes.", "request_too_large")
    if not raw.strip():
        return ClientSecretRequest()
    try:
        return ClientSecretRequest.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        return _error(400, f"The request body is not valid JSON: {exc.msg}.", "invalid_json")
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        return _error(400, f"Invalid value for '{param}': {first['msg']}.", "invalid_value", param)


async def create_client_secret(request: Request) -> JSONResponse:
    state: AppState = request.app.state.voicebot
    # Only a real API key may mint: a leaked page token must not be able to renew itself forever.
    if state.auth.required and not state.auth.is_api_key(bearer(request.headers)):
        message = "Missing API key." if bearer(request.headers) is None else "Incorrect API key provided."
        return _error(401, message, "invalid_api_key")
    parsed = await _parse(request)
    if isinstance(parsed, JSONResponse):
        return parsed
    ttl = (parsed.expires_after or ExpiresAfter()).seconds
    return JSONResponse(_secret(state, ttl))


async def create_demo_secret(request: Request) -> JSONResponse:
    state: AppState = request.app.state.voicebot
    settings = state.settings
    origin = request.headers.get("origin")
    if origin is not None and not origin_allowed(origin, request.headers.get("host"), settings.allowed_origins):
        return _error(403, "This Origin may not request demo tokens.", "origin_not_allowed")
    if state.auth.required and not settings.demo_page_tokens:
        return _error(403, "This server requires an API key and does not hand out demo tokens. Paste a client "
                      "token minted with POST /v1/realtime/client_secrets, or start the server with "
                      "--demo-page-tokens.", "demo_tokens_disabled", auth_required=True)
    return JSONResponse({**_secret(state, DEMO_TOKEN_TTL_S), "auth_required": state.auth.required})


routes = [
    Route("/v1/realtime/client_secrets", create_client_secret, methods=["POST"]),
    Route("/v1/demo/client_secret", create_demo_secret, methods=["POST"]),
]
