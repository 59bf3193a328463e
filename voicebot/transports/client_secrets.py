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

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from voicebot.core import events as ev
from voicebot.errors import HttpError
from voicebot.session_config import SessionConfig
from voicebot.state import AppState
from voicebot.transports.access import API_KEY_ONLY, app_state, authorize, check_origin, mint, session_owner
from voicebot.transports.http_common import json_errors, read_model

#: The demo page mints a token right before it connects, so it needs only a short one; an open
#: socket stays open after its token expires (as with the hosted API).
DEMO_TOKEN_TTL_S = 120
MAX_REQUEST_BYTES = 64 * 1024


class ExpiresAfter(BaseModel):
    """OpenAI's shape: the token expires ``seconds`` (10..7200) after its creation."""

    model_config = ConfigDict(extra="forbid")
    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(default=600, ge=10, le=7200)


class ClientSecretRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    expires_after: ExpiresAfter | None = None
    session: ev.SessionConfig | None = None


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


async def _secret(state: AppState, ttl_s: float, owner: str | None) -> dict[str, Any]:
    value, expires_at = await mint(state, ttl_s, owner=owner)
    return {"value": value, "expires_at": int(expires_at), "session": default_session(state)}


@json_errors
async def create_client_secret(request: Request) -> Response:
    # Only a real API key may mint: a leaked page token must not be able to renew itself forever.
    state = await authorize(request, API_KEY_ONLY)
    parsed = await read_model(request, ClientSecretRequest, MAX_REQUEST_BYTES, empty_ok=True)
    ttl = (parsed.expires_after or ExpiresAfter()).seconds
    # The token's sessions count against the key that minted it (--max-sessions-per-key).
    return JSONResponse(await _secret(state, ttl, session_owner(request, state)))


@json_errors
async def create_demo_secret(request: Request) -> Response:
    state = app_state(request)
    check_origin(request, state)
    if state.auth.required and not state.settings.demo_page_tokens:
        raise HttpError(403, "This server requires an API key and does not hand out demo tokens. Paste a client "
                        "token minted with POST /v1/realtime/client_secrets, or start the server with "
                        "--demo-page-tokens.", "demo_tokens_disabled", auth_required=True)
    # Demo tokens have no key behind them: each browser address is its own owner.
    owner = f"demo:{request.client.host if request.client else '?'}"
    return JSONResponse({**await _secret(state, DEMO_TOKEN_TTL_S, owner), "auth_required": state.auth.required})


routes = [
    Route("/v1/realtime/client_secrets", create_client_secret, methods=["POST"]),
    Route("/v1/demo/client_secret", create_demo_secret, methods=["POST"]),
]
