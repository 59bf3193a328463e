"""The HTTP part both remote audio engines share (``asr_openai``, ``tts_openai``).

:class:`OpenAIAudioClient`: one pooled, thread-safe httpx client per OpenAI-compatible server,
timeouts, retries with backoff on a connection that failed or HTTP 408/409/429/5xx, and an
:class:`~voicebot.errors.EngineError` whose message names the server and what it said. Retrying
is safe here (unlike an LLM stream, nothing has reached the listener before the call returns),
but a read timeout is not retried: the server has the request and is slow, and the turn's own
bound (``--engine-timeout-s``) would run out before a second try could answer.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from voicebot.engines.faults import ENGINE_TIMEOUT
from voicebot.errors import EngineError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A loopback or LAN server that does not accept within this is down, not slow.
CONNECT_TIMEOUT_S = 5.0
#: Statuses worth another try (the ones the ``openai`` client retries too).
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Backoff before retry n (0-based): BACKOFF_S * 2**n, at most BACKOFF_MAX_S, with jitter.
BACKOFF_S = 0.25
BACKOFF_MAX_S = 2.0


class OpenAIAudioClient:
    """A pooled, thread-safe HTTP client for one OpenAI-compatible ``/audio/*`` server.

    ``what`` names the engine in errors ("ASR", "TTS"), ``code`` is the fault code a failure
    carries (``asr_failed``, ``tts_failed``; a timeout is ``engine_timeout``).
    """

    def __init__(self, base_url: str, api_key: str = "", *, what: str, code: str, timeout: float = 30.0,
                 retries: int = 2, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.what = what
        self.code = code
        self.retries = max(0, retries)
        read = timeout if timeout > 0 else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, transport=transport,
            timeout=httpx.Timeout(read, connect=min(read or CONNECT_TIMEOUT_S, CONNECT_TIMEOUT_S)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8, keepalive_expiry=30.0),
        )
        self._timeout = timeout

    def post(self, path: str, read: Callable[[httpx.Response], T], **request: Any) -> T:
        """``read(response)`` of a successful (2xx) streamed response to ``POST path``.

        ``read`` consumes the body; a transport error while it does retries the whole request
        (nothing has been returned yet, so nothing is repeated). Raises :class:`EngineError`.
        """
        url = self.base_url + path
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                with self._client.stream("POST", path, **request) as response:
                    if response.status_code < 300:
                        return read(response)
                    response.read()
                    if response.status_code in RETRY_STATUSES and not last:
                        self._wait(attempt, f"HTTP {response.status_code}", response)
                        continue
                    raise EngineError(f"the {self.what} server at {url} answered HTTP {response.status_code}: "
                                      f"{_error_message(response)}", code=self.code)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout) and not last:
                    self._wait(attempt, "connect timeout", None)
                    continue
                raise EngineError(f"the {self.what} server at {url} did not answer within {self._timeout:g} s "
                                  f"({type(exc).__name__})", code=ENGINE_TIMEOUT) from exc
            except httpx.TransportError as exc:  # refused, reset, closed mid-body, bad HTTP
                if not last:
                    self._wait(attempt, type(exc).__name__, None)
                    continue
                raise EngineError(f"the {self.what} server at {url} is unreachable: {type(exc).__name__}: "
                                  f"{exc or 'connection failed'}", code=self.code) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _wait(self, attempt: int, why: str, response: httpx.Response | None) -> None:
        delay = min(BACKOFF_MAX_S, BACKOFF_S * 2**attempt) * random.uniform(0.75, 1.0)
        after = _retry_after(response)
        if after is not None:
            delay = min(BACKOFF_MAX_S, after)
        log.info("%s server %s: %s, retry %d/%d in %.2f s", self.what, self.base_url, why, attempt + 1,
                 self.retries, delay)
        time.sleep(delay)

    def close(self) -> None:
        self._client.close()


def read_all(response: httpx.Response) -> bytes:
    return response.read()


def _error_message(response: httpx.Response) -> str:
    """The OpenAI error object's ``message`` if there is one, else the start of the body."""
    try:
        parsed = response.json()
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if parsed.get("detail"):
            return str(parsed["detail"])
    text = response.text.strip()
    return text[:300] if text else response.reason_phrase or "no body"


def _retry_after(response: httpx.Response | None) -> float | None:
    raw = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None  # an HTTP date: use our own backoff
