"""The ASGI application: routes, and a lifespan that loads the engines once for every session."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from voicebot.auth import Authenticator
from voicebot.config import Settings
from voicebot.core.conversation import Conversation
from voicebot.engines.base import Engines
from voicebot.session import Session
from voicebot.transports import chat_completions, client_secrets, sse, telephony, webrtc
from voicebot.transports.realtime_ws import realtime_endpoint

log = logging.getLogger(__name__)

BUNDLED_WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@dataclass
class AppState:
    """Process-wide state every transport reaches through ``app.state.voicebot``."""

    settings: Settings
    engines: Engines
    auth: Authenticator
    sessions: set[Session] = field(default_factory=set)
    conversations: dict[str, Conversation] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    extras: dict[str, Any] = field(default_factory=dict)  # per-transport registries


EngineLoader = Callable[[Settings], Engines]


def _default_loader(settings: Settings) -> Engines:
    from voicebot.engines.loader import load_engines

    return load_engines(settings)


async def healthz(request: Request) -> Response:
    state: AppState | None = getattr(request.app.state, "voicebot", None)
    if state is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ok", "sessions": len(state.sessions),
                         "uptime_s": round(time.time() - state.started_at, 1)})


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
        app.state.voicebot = AppState(settings, loaded, Authenticator(settings.api_keys))
        log.info("voicebot ready on http://%s:%d (voice WebSocket at /v1/realtime)", settings.host, settings.port)
        try:
            yield
        finally:
            state: AppState = app.state.voicebot
            await webrtc.close_calls(state)
            for session in list(state.sessions):
                await session.close()
            await sse.close_hub(state)
            if engines is None:  # engines we loaded are ours to release
                from voicebot.engines.loader import close_engines

                await close_engines(loaded)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        WebSocketRoute("/v1/realtime", realtime_endpoint),
        *chat_completions.routes,
        *sse.routes,
        *client_secrets.routes,
        *telephony.routes,
        *webrtc.routes,
    ]
    web_dir = Path(settings.web_dir) if settings.web_dir else BUNDLED_WEB_DIR
    if web_dir.is_dir():
        routes.append(Mount("/", StaticFiles(directory=web_dir, html=True), name="web"))
    return Starlette(routes=routes, lifespan=lifespan)
