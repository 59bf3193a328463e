"""Graceful shutdown: the uvicorn server that drains the app before it stops.

uvicorn on its own, at SIGTERM or Ctrl-C, stops listening, closes every open WebSocket with 1012
at once and waits (``timeout_graceful_shutdown``) for the other connections before the lifespan
shutdown runs — so a reply being spoken would be cut mid-word, and SSE streams, which never end
by themselves, would hold the process until they are cancelled. :class:`DrainingServer` changes
the order:

1. at the signal: ``AppState.begin_shutdown()`` — /readyz and every new connection or request
   answer 503 ``shutting_down`` (the socket keeps listening, so clients get that answer rather than
   a refused connection while a load balancer takes the instance out);
2. ``AppState.drain``: the replies in flight finish, up to ``--shutdown-grace-s``; then realtime
   WebSockets close with 1001, SSE streams end with a ``shutdown`` event, calls hang up;
3. uvicorn's own shutdown: stop listening, wait briefly for the connections told to end, then the
   lifespan releases the engines.

A second Ctrl-C skips the wait (uvicorn's ``force_exit``). Unlike uvicorn, the caught signal is not
re-raised after a clean shutdown, so the process exits with status 0.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Generator
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from voicebot.state import AppState

#: What uvicorn waits for the connections left after the drain (sockets closing, a chat completion).
AFTER_DRAIN_S = 3.0
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, grace_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s

    def app_state(self) -> AppState | None:
        state = getattr(self.app.state, "voicebot", None)
        return state if isinstance(state, AppState) else None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        state = self.app_state()
        if state is not None:  # a flag only: safe in a signal handler
            state.begin_shutdown()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = self.app_state()
        if state is not None and not self.force_exit:
            await state.drain(self.grace_s, give_up=lambda: self.force_exit)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, without re-raising the signal afterwards (that ends the process with -15 or a
        KeyboardInterrupt traceback instead of status 0)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve(app: Starlette, config: uvicorn.Config, grace_s: float) -> int:
    """Run the app until a signal and a graceful shutdown; the exit status (3: it never started)."""
    config.timeout_graceful_shutdown = int(AFTER_DRAIN_S)
    server = DrainingServer(config, app, grace_s)
    server.run()
    return 0 if server.started else 3
