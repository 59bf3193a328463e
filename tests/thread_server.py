"""An in-process voicebot server on a loopback port, with fake engines, for transport tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import uvicorn

from tests.conftest import free_port
from tests.session.fakes import SlowLlm, ToneTts, fake_engines
from voicebot.config import from_env
from voicebot.conversation_hub import ConversationHub
from voicebot.server import create_app
from voicebot.state import AppState

T = TypeVar("T")


class ThreadServer:
    """uvicorn in a thread with fake engines; ``call`` runs a function on the server's loop.

    The transport under test is real (sockets, uvicorn, the app); only the models are fakes.
    """

    def __init__(self, llm: SlowLlm | None = None, **settings: Any) -> None:
        self.llm = llm or SlowLlm(delay=0.05)
        self.port = free_port()
        self.settings = from_env({}, host="127.0.0.1", port=self.port, **settings)
        self.app = create_app(self.settings, engines=fake_engines(llm=self.llm, tts=ToneTts(ms_per_char=20)))
        # The same WebSocket size cap as `voicebot serve`: messages up to twice the limit get an
        # error event, larger ones close the socket.
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=2,
                                ws_max_size=self.settings.max_message_bytes * 2 + 1024)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.http}/healthz", timeout=1).status_code == 200:
                    self.loop = self.call_loop()
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def call_loop(self) -> asyncio.AbstractEventLoop:
        # The loop uvicorn runs on: the thread's running loop, found through a server task.
        for task in asyncio.all_tasks(self.server_loop()):
            return task.get_loop()
        raise RuntimeError("no loop")

    def server_loop(self) -> asyncio.AbstractEventLoop:
        servers = self.server.servers
        assert servers, "server not started"
        return servers[0].get_loop()

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The Realtime WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model=voicebot"

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.voicebot
        return state

    @property
    def hub(self) -> ConversationHub:
        return self.state.hub

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's event loop (the hub is not thread-safe) and return its result."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append(fn())
            finally:
                done.set()

        self.server_loop().call_soon_threadsafe(run)
        assert done.wait(10)
        return box[0]  # type: ignore[no-any-return]
