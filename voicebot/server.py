"""The ASGI application, assembled: routes of every transport, and a lifespan that loads the engines
once and builds the shared :class:`~voicebot.state.AppState` every transport reads.

Nothing else lives here: transports import ``voicebot.state``, never this module.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from voicebot.config import Settings
from voicebot.core.events import new_id
from voicebot.engines.base import Engines
from voicebot.errors import HttpError
from voicebot.metrics import CONTENT_TYPE
from voicebot.redis_store import RedisStore, redact
from voicebot.state import AppState
from voicebot.transports import audio_api, chat_completions, client_secrets, openapi, sse, telephony, webrtc
from voicebot.transports.access import authorize, error_response
from voicebot.transports.rate_limit import RateLimitMiddleware
from voicebot.transports.realtime_ws import realtime_endpoint

log = logging.getLogger(__name__)

BUNDLED_WEB_DIR = Path(__file__).resolve().parent.parent / "web"

EngineLoader = Callable[[Settings], Engines]


def _default_loader(settings: Settings) -> Engines:
    from voicebot.engines.loader import load_engines

    return load_engines(settings)


def _loaded_state(request: Request) -> AppState | None:
    """The app's state once the lifespan has built it (None while the models load)."""
    state = getattr(request.app.state, "voicebot", None)
    return state if isinstance(state, AppState) else None


async def healthz(request: Request) -> Response:
    """Alive: the process answers (a load balancer's liveness probe)."""
    state = _loaded_state(request)
    if state is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ok", "sessions": len(state.sessions),
                         "uptime_s": round(time.time() - state.started_at, 1)})


async def readyz(request: Request) -> Response:
    """Ready for new work: models loaded and warmed, not shutting down (a readiness probe)."""
    state = _loaded_state(request)
    if state is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    if state.closing:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    """Prometheus text format; behind the API key when keys are set (scrapers send a bearer token).
    Still answered while shutting down: the last scrape sees the drain."""
    try:
        state = await authorize(request, new_work=False)
    except HttpError as err:
        return error_response(err)
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


def create_app(settings: Settings, *, engines: Engines | None = None,
               loader: EngineLoader = _default_loader) -> Starlette:
    """Build the app. Pass ``engines`` to reuse already-loaded ones (tests, benchmarks)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loaded = engines
        if loaded is None:
            started = time.monotonic()
            loaded = await anyio.to_thread.run_sync(loader, settings)
            log.info("engines ready in %.1f s", time.monotonic() - started)
        store = None
        if settings.store != "memory":
            store = await RedisStore.connect(
                settings.store, instance_id=new_id("inst"), ttl_s=settings.conversation_idle_ttl_s,
                log_events=settings.sse_log_events, max_items=settings.max_conversation_items)
            log.info("shared state in Redis at %s", redact(settings.store))
        state = app.state.voicebot = AppState.create(settings, loaded, store)
        scheme = "https" if settings.ssl_certfile else "http"
        log.info("voicebot ready on %s://%s:%d (voice WebSocket at /v1/realtime)", scheme, settings.host, settings.port)
        try:
            yield
        finally:
            await state.aclose()  # calls, sessions, conversation streams: before the engines go
            if engines is None:  # engines we loaded are ours to release
                from voicebot.engines.loader import close_engines

                await close_engines(loaded)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        WebSocketRoute("/v1/realtime", realtime_endpoint),
        *chat_completions.routes,
        *audio_api.routes,
        *sse.routes,
        *client_secrets.routes,
        *telephony.routes,
        *webrtc.routes,
        *openapi.routes,
    ]
    web_dir = Path(settings.web_dir) if settings.web_dir else BUNDLED_WEB_DIR
    if web_dir.is_dir():
        routes.append(Mount("/", StaticFiles(directory=web_dir, html=True), name="web"))
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware(settings))


def middleware(settings: Settings) -> list[Middleware]:
    """CORS outermost, so a refused request (a 429 included) still carries the headers a browser
    needs to read it; then the rate limit, before any route."""
    return [
        # The HTTP API's CORS follows the WebSocket Origin allowlist (--allowed-origin; '*' = any).
        # Credentials are bearer headers, never cookies, so no Allow-Credentials. Request headers
        # are mirrored: the openai SDK in a browser sends Authorization plus its own x-stainless-*.
        Middleware(CORSMiddleware, allow_origins=list(settings.allowed_origins), allow_methods=["GET", "POST"],
                   allow_headers=["*"], expose_headers=list(EXPOSED_HEADERS), max_age=600),
        Middleware(RateLimitMiddleware),
    ]


#: Response headers a browser page may read: a 429's wait, a WebRTC call's URL.
EXPOSED_HEADERS = ("Retry-After", "Location")
