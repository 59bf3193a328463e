"""The embedded LLM: llama.cpp through xllamacpp (binary wheel), one model shared by all sessions.

Why xllamacpp (measurements in docs/engines.md): it installs in seconds as a wheel, its server
core gives ``n_parallel`` slots (several sessions generate at once without a Python lock),
per-slot prompt caching (system prompt + history stay in the KV cache between turns, and the
slot whose cached prompt matches best is reused) and stop-on-callback: returning True from the
chunk callback ends generation immediately.

Its embedded HTTP listener cannot be switched off; it binds to 127.0.0.1 only, on a random
port, and we give it a random API key so no other local process can use it. We call the
request handler directly, which skips the HTTP layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# llama.cpp's OpenMP workers spin-wait by default; when ASR/TTS hold a core that spinning makes
# 2-thread decode collapse (measured 27 -> 10 tok/s). PASSIVE makes them sleep. It only takes
# effect if no OpenMP runtime was initialised yet, so ``voicebot.__main__`` should set it too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import xllamacpp

from voicebot.core.types import ChatMessage, LlmPiece, Tool, ToolCallDelta, ToolChoice
from voicebot.engines.threadstream import thread_stream
from voicebot.errors import EngineError, ModelError

log = logging.getLogger(__name__)

WARM_UP_USER_TEXT = "Hello."


class Slots:
    """``n`` places, taken first come first served; waiting is cancellable.

    Not an ``asyncio.Semaphore``: that binds to the first event loop it waits on, and one model
    outlives loops (tests, tools); each waiter's future here belongs to its own loop.
    """

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def take(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed a place in the same instant: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def give_back(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


#: With tools offered, sampling is at most this hot (see ``_request``).
TOOLS_MAX_TEMPERATURE = 0.0
#: The shipped model's chat template with its tool-call format (the file's header says why).
TOOLS_TEMPLATE = Path(__file__).with_name("templates") / "qwen2.5-tools.jinja"


def tool_fields(tools: Sequence[Tool], tool_choice: ToolChoice) -> dict[str, Any]:
    """The request fields that offer ``tools`` to llama.cpp.

    ``none`` offers nothing (the history's earlier calls still render). ``required`` and a named
    function do not use llama.cpp's own ``required`` mode: with this build its grammar aborts the
    process when a finished call is followed by another token. Instead the model is offered the
    tools (only the named one, if named) and the template is told to ask for a call now; the lazy
    grammar still holds the call's arguments to the schema.
    """
    if not tools or tool_choice == "none":
        return {}
    offered = list(tools)
    call_now = tool_choice != "auto"
    if tool_choice not in ("auto", "required"):
        offered = [t for t in tools if t.name == tool_choice]
    return {"tools": [t.to_openai() for t in offered], "tool_choice": "auto", "parallel_tool_calls": True,
            "chat_template_kwargs": {"call_now": call_now}}


class LlamaCppModel:
    """Implements :class:`voicebot.engines.base.LanguageModel` on an in-process llama.cpp server."""

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int = 2,
        context: int = 4096,
        parallel: int = 2,
        name: str = "qwen2.5-coder-1.5b-instruct",
        sampling: Mapping[str, Any] | None = None,
        cache_ram_mib: int = 1024,
        chat_template: str | None = None,
    ) -> None:
        """``sampling``: extra llama-server request fields for every generation (``top_k``,
        ``repeat_penalty``, ``ignore_eos``...). ``chat_template``: a Jinja chat template instead of
        the GGUF's own (the shipped model's tool-call format, see :data:`TOOLS_TEMPLATE`)."""
        if not model_path.is_file():
            raise ModelError(f"LLM model file not found: {model_path}")
        self.name = name
        self.parallel = max(1, parallel)
        self._sampling = dict(sampling or {})
        params = xllamacpp.CommonParams()
        params.model.path = str(model_path)
        params.n_ctx = context * self.parallel  # the server splits n_ctx evenly across slots
        params.n_parallel = self.parallel
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.hostnames = ["127.0.0.1"]
        self._api_key = secrets.token_hex(16)
        params.api_keys = [self._api_key]
        params.n_threads_http = 1
        params.cache_prompt = True
        # Jinja templates: llama.cpp renders the tools into the prompt and derives from the template
        # the parser of the model's tool calls and the lazy grammar that holds their arguments to
        # each tool's JSON schema (its "differential autoparser").
        params.use_jinja = True
        if chat_template is not None:
            params.chat_template = chat_template
        # llama.cpp also keeps evicted slots' prompts in RAM to restore them into any slot (a
        # conversation that lost its slot to another resumes without a cold prompt evaluation);
        # bounded, or a long-running server grows by ~28 KB per cached token up to 8 GB.
        params.cache_ram_mib = cache_ram_mib
        params.endpoint_metrics = True  # for metrics(); the HTTP route is key-protected anyway
        params.verbosity = -1 if not log.isEnabledFor(logging.DEBUG) else 3
        params.warmup = True
        try:
            self._server: Any = xllamacpp.Server(params)
        except Exception as exc:
            raise ModelError(f"llama.cpp could not load {model_path}: {exc}") from exc
        self._closed = threading.Event()
        self.generating = 0  # replies being generated right now (any session)
        self.waiting = 0  # replies waiting for a slot
        #: Admission: one generation per slot. Without it a burst of replies would each start a
        #: thread and queue inside llama.cpp, where a cancelled one cannot be taken back; here
        #: the extra ones wait (cancellably) for a slot, first come first served.
        self._slots = Slots(self.parallel)

    @property
    def listening_address(self) -> str:
        """The unavoidable loopback HTTP listener (protected by a random key)."""
        return str(self._server.listening_address)

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float,
        tools: Sequence[Tool] = (), tool_choice: ToolChoice = "auto",
    ) -> AsyncGenerator[LlmPiece, None]:
        request = self._request(messages, max_tokens, temperature, tools, tool_choice)
        return self._admitted(lambda: thread_stream(lambda emit, stop: self._generate(request, emit, stop)))

    async def _admitted(self, start: Callable[[], AsyncGenerator[LlmPiece, None]]
                        ) -> AsyncGenerator[LlmPiece, None]:
        """Waits for a free slot (``parallel``), then generates; counts the replies being
        generated, so prefills can stay out of their way. Closing or cancelling it while it
        waits just gives up the place in line: no thread was started."""
        self.waiting += 1
        try:
            await self._slots.take()
        finally:
            self.waiting -= 1
        self.generating += 1
        try:
            stream = start()
            async with contextlib.aclosing(stream):
                async for piece in stream:
                    yield piece
        finally:
            self.generating -= 1
            self._slots.give_back()

    def _request(self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float,
                 tools: Sequence[Tool] = (), tool_choice: ToolChoice = "auto") -> dict[str, Any]:
        request = {
            **self._sampling,
            "messages": [m.to_openai() for m in messages],
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "cache_prompt": True,
        }
        offered = tool_fields(tools, tool_choice)
        if offered:
            # Whether to call is the reply's first token (p ~0.6-0.8 for a needed call on this 1.5B
            # model, ~0.3 for some that are not): sampled at 0.7 a third of needed calls became
            # words, and at 0.2 a few spurious calls slipped in. Tools want decisions: greedy.
            request["temperature"] = min(temperature, TOOLS_MAX_TEMPERATURE)
        return request | offered

    def _generate(self, request: dict[str, Any], emit: Callable[[LlmPiece], None], stop: threading.Event) -> None:
        """Blocking; runs in the stream's own thread. Returns after the server released the slot."""
        if self._closed.is_set():
            raise EngineError("the embedded LLM is closed")
        errors: list[str] = []

        def on_chunk(chunk: dict[str, Any]) -> bool:
            # Called from C++ once per token; it must not raise. True = stop generating now.
            if "timings" in chunk and log.isEnabledFor(logging.DEBUG):
                t = chunk["timings"]
                log.debug("llama.cpp: %s prompt tokens evaluated in %.0f ms (%s cached), %s predicted",
                          t.get("prompt_n"), t.get("prompt_ms", 0), t.get("cache_n"), t.get("predicted_n"))
            error = chunk.get("error")
            if error:
                errors.append(str(error.get("message", error)) if isinstance(error, dict) else str(error))
                return True
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                if piece:
                    emit(piece)
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") or {}
                    emit(ToolCallDelta(int(call.get("index", 0)), call.get("id") or None,
                                       function.get("name") or None, function.get("arguments") or ""))
            return stop.is_set()

        self._server.handle_chat_completions(request, on_chunk)
        if errors:
            raise EngineError(f"embedded LLM error: {errors[0]}")

    async def prefill(self, messages: Sequence[ChatMessage], tools: Sequence[Tool] = ()) -> None:
        """Prompt evaluation only (llama.cpp decodes one token, which is thrown away).

        The slot keeps the evaluated prompt in its KV cache (cache_prompt) and llama.cpp picks the
        slot whose cache matches a request best, so the reply that follows reuses it. Cancelling
        stops after that one token; a prompt evaluation itself cannot be interrupted.
        """
        if self.generating:
            # Best effort: with replies being generated the cores are theirs (a prefill's prompt
            # evaluation cannot be interrupted, and it would delay someone's next words).
            return
        stop = threading.Event()
        try:
            await asyncio.to_thread(self._generate, self._request(messages, 0, 0.0, tools), lambda _piece: None, stop)
        finally:
            stop.set()

    def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float = 0.0) -> str:
        """Blocking, whole-reply generation (warm-up, benchmarks, tools)."""
        pieces: list[LlmPiece] = []
        self._generate(self._request(messages, max_tokens, temperature), pieces.append, threading.Event())
        return "".join(p for p in pieces if isinstance(p, str))

    def warm_up(self, system_prompt: str) -> float:
        """A 1-token reply to the default system prompt, so its KV cache is ready for the first user.

        Returns the seconds it took (the cold prompt evaluation the first user no longer pays).
        """
        start = time.perf_counter()
        self.complete(
            [ChatMessage("system", system_prompt), ChatMessage("user", WARM_UP_USER_TEXT)], max_tokens=1
        )
        return time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """llama.cpp's counters (``tokens_predicted_total``, ``requests_processing``, ...).

        Lets tests and health checks see that a cancelled generation really stopped.
        """
        text = self._server.handle_metrics()
        values: dict[str, float] = {}
        for line in str(text).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name.removeprefix("llamacpp:")] = float(value)
        return values

    def close(self) -> None:
        """Free the model (and its listener); streams started afterwards fail with EngineError."""
        self._closed.set()
        self._server = None
