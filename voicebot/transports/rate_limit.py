"""``--rate-limit-per-minute`` in front of every API route: one ASGI middleware, so no route can
forget it (chat completions, conversations and their streams, client secrets, WebRTC offers, the
TwiML webhook, and the WebSocket handshakes of ``/v1/realtime`` and the carriers' media streams).

Who is counted: the API key a request presents (header, the browser subprotocol or ``?token=``);
a client token counts for the key that minted it, so a backend cannot multiply its budget by
handing out tokens. A request with no valid credential counts for its client IP (uvicorn takes
it from ``X-Forwarded-For`` only when the proxy is on ``--forwarded-allow-ips``, loopback by
default), which also slows down anyone guessing keys. Probes (``/healthz``, ``/readyz``,
``/metrics``), ``/openapi.json`` and the demo page's files are never counted: a load balancer or
a scraper must not be locked out by a busy client.

Over the limit: HTTP 429 ``rate_limit_exceeded`` (type ``requests``, as the hosted API) with a
``Retry-After`` of whole seconds; a WebSocket handshake is refused with the same response.
"""

from __future__ import annotations

import contextlib
import time

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from voicebot.errors import HttpError
from voicebot.state import AppState
from voicebot.transports.access import error_response, presented_credential, recall, refuse

#: The API's paths; everything else (probes, the OpenAPI document, static files) goes uncounted.
LIMITED_PREFIXES = ("/v1/", "/telephony/")


def rate_limited(retry_after: int, per_minute: int) -> HttpError:
    return HttpError(429, f"Rate limit reached: {per_minute} requests per minute. Try again in "
                     f"{retry_after} s.", "rate_limit_exceeded", type="requests",
                     headers={"Retry-After": str(retry_after)})


async def client_of(conn: HTTPConnection, state: AppState) -> str:
    """The rate-limit bucket of a request: its API key's id (a token's minting key's, wherever it
    was minted), else its client IP."""
    credential = presented_credential(conn)
    if credential is None:
        credential = conn.query_params.get("token")
    with contextlib.suppress(HttpError):  # the store is away: the route itself answers that
        await recall(state, credential)
    principal = state.auth.owner(credential)
    if principal is not None:
        return principal
    return "ip:" + (conn.client.host if conn.client else "unknown")


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not str(scope.get("path", "")).startswith(LIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        state = getattr(scope["app"].state, "voicebot", None)
        if not isinstance(state, AppState) or state.limiter is None:
            await self.app(scope, receive, send)  # still loading (the route answers 503), or no limit
            return
        limiter = state.limiter
        conn = HTTPConnection(scope)
        retry_after = limiter.retry_after(await client_of(conn, state), time.monotonic())
        if not retry_after:
            await self.app(scope, receive, send)
            return
        err = rate_limited(retry_after, state.settings.rate_limit_per_minute)
        if scope["type"] == "websocket":
            await refuse(WebSocket(scope, receive, send), err)
        else:
            await error_response(err)(scope, receive, send)
