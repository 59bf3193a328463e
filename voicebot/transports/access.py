"""Who may use an endpoint, checked in one place for every HTTP route and WebSocket handshake.

Each endpoint declares what it accepts as an :class:`Access` (browser Origin check, client
tokens, a token in the query string) and calls :func:`authorize`, which answers with the
:class:`~voicebot.state.AppState` or raises :class:`~voicebot.errors.HttpError` (401/403 with an
OpenAI-shaped body). HTTP handlers return that as JSON; WebSocket handlers refuse the handshake
with it (:func:`refuse`), so a refused client gets the same status and body either way.

Credentials, in the order they are looked at: ``Authorization: Bearer`` (an API key or an
``ek_`` client token), the ``openai-insecure-api-key.<key>`` subprotocol (WebSockets: browsers
cannot set headers), then ``?token=`` where the endpoint allows it (EventSource URLs, carriers).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from voicebot import logs
from voicebot.auth import bearer, origin_allowed, subprotocol_key
from voicebot.conversations import store_unavailable
from voicebot.errors import HttpError
from voicebot.redis_store import StoreUnavailable
from voicebot.state import AppState


@dataclass(frozen=True, slots=True)
class Access:
    check_origin: bool = False  # browsers must be same-origin or on --allowed-origin
    client_tokens: bool = True  # ek_ client tokens count as well as API keys
    query_token: bool = False  # ?token= with a client token (scoped to ``token_scope`` if given)
    query_api_key: bool = False  # ?token= may also be an API key (carriers' stream URLs)


#: The voice endpoints browsers open (the Realtime WebSocket, WebRTC calls).
BROWSER = Access(check_origin=True)
#: The HTTP API (chat completions, conversations).
API = Access()
#: Minting tokens: only a long-lived API key, so a leaked token cannot renew itself.
API_KEY_ONLY = Access(client_tokens=False)
#: An EventSource URL: a header credential, or a conversation-scoped ?token=.
EVENT_STREAM = Access(query_token=True)
#: A carrier's media stream: the key or a token in the URL (carriers cannot set headers).
CARRIER = Access(query_token=True, query_api_key=True)


def app_state(conn: HTTPConnection, *, new_work: bool = True) -> AppState:
    """The state of the app serving this request; 503 while the models are still loading, and 503
    ``shutting_down`` for new work once a shutdown has begun (``new_work=False``: a scrape, a hangup)."""
    state = getattr(conn.app.state, "voicebot", None)
    if not isinstance(state, AppState):
        raise HttpError(503, "The server is still loading its models; try again shortly.", "not_ready",
                        type="server_error")
    if state.closing and new_work:
        raise HttpError(503, "The server is shutting down; connect to another instance or try again shortly.",
                        "shutting_down", type="server_error")
    return state


def check_origin(conn: HTTPConnection, state: AppState) -> None:
    if not origin_allowed(conn.headers.get("origin"), conn.headers.get("host"), state.settings.allowed_origins):
        raise HttpError(403, "This Origin is not allowed to connect.", "origin_not_allowed")


async def authorize(conn: HTTPConnection, access: Access = API, *, token_scope: str | None = None,
                    new_work: bool = True) -> AppState:
    """The app state if ``conn`` may use this endpoint; raises HttpError 401/403 otherwise (503 while
    loading, or shutting down unless ``new_work`` is False). A client token minted on another
    instance is fetched from the shared store first (503 ``store_unavailable`` if it cannot be)."""
    state = app_state(conn, new_work=new_work)
    if access.check_origin:
        check_origin(conn, state)
    auth = state.auth
    if not auth.required:
        return state
    key = presented_credential(conn)
    await recall(state, key if key is not None else conn.query_params.get("token") if access.query_token else None)
    if key is not None:
        if auth.accepts(key) if access.client_tokens else auth.is_api_key(key):
            return state
        raise HttpError(401, "Incorrect API key provided.", "invalid_api_key")
    token = conn.query_params.get("token") if access.query_token else None
    if token is not None:
        if (access.query_api_key and auth.is_api_key(token)) or auth.tokens.valid(token, scope=token_scope):
            return state
        raise HttpError(401, "The token is invalid or expired; mint a new one.", "invalid_token")
    hint = " Send Authorization: Bearer, or ?token=." if access.query_token else ""
    raise HttpError(401, f"Missing API key.{hint}", "invalid_api_key")


async def mint(state: AppState, ttl_s: float | None = None, *, scope: str | None = None,
               owner: str | None = None) -> tuple[str, float]:
    """A client token valid on every instance (503 ``store_unavailable`` if the store cannot take it)."""
    try:
        return await state.auth.mint(ttl_s, scope=scope, owner=owner)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None


async def recall(state: AppState, credential: str | None) -> None:
    try:
        await state.auth.recall(credential)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None


def presented_credential(conn: HTTPConnection) -> str | None:
    """The credential in the headers: ``Authorization: Bearer``, else (WebSockets) the key subprotocol."""
    key = bearer(conn.headers)
    if key is None and conn.scope["type"] == "websocket":
        key = subprotocol_key(conn.scope.get("subprotocols", []))
    return key


def session_owner(conn: HTTPConnection, state: AppState, access: Access = BROWSER) -> str | None:
    """Whose realtime sessions this (authorized) connection opens, for --max-sessions-per-key: the
    API key's fingerprint, or for a client token the minting key's. None without API keys: then
    there is nobody to count against, and --max-sessions alone bounds the server."""
    if not state.auth.required:
        return None
    credential = presented_credential(conn)
    if credential is None and access.query_token:
        credential = conn.query_params.get("token")
    return state.auth.owner(credential)


def error_response(err: HttpError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers or None)


async def refuse(websocket: WebSocket, err: HttpError) -> None:
    """Refuse a WebSocket handshake with the error's HTTP status and JSON body."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        logs.handshake_refused()  # uvicorn then logs a false "without completing handshake" error
        await websocket.send_denial_response(error_response(err))
    else:  # servers without the denial extension: the client sees a 403 handshake failure
        await websocket.close(code=1008, reason=err.message[:120])
