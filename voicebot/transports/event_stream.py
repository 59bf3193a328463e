"""A streamed ``text/event-stream`` response that stops its producer the moment the client leaves.

Written as a small ASGI response rather than starlette's StreamingResponse or sse-starlette: it
watches for the client's disconnect itself and cancels the writer at once (a dropped chat
completion must stop the LLM at once), and costs one extra task per stream (10,000 idle streams
are a benchmark target). Used by the conversation streams and by streamed chat completions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx would otherwise buffer the stream
}


class EventStreamResponse(Response):
    """Writes an async iterator of SSE bytes; a client disconnect cancels it at once.

    Closing the iterator (``aclose``) runs its ``finally`` blocks, which is where the producers
    stop: the conversation listener unsubscribes, the chat completion closes the LLM stream.
    """

    media_type = "text/event-stream"

    def __init__(self, body: AsyncGenerator[bytes, None], status_code: int = 200) -> None:
        super().__init__(None, status_code, headers=SSE_HEADERS, media_type=self.media_type)
        # A stream has no length: chunked transfer encoding, like StreamingResponse.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.stream = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"gone": False, "done": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            state["gone"] = True
            if not state["done"]:
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            state["done"] = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()  # our own cancellation: the client left, the response is over
        except OSError:  # the socket broke under a write
            pass
        finally:
            state["done"] = True
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            await self.stream.aclose()
