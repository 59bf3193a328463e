"""Shared pieces of the HTTP API: bounded JSON bodies, and handlers whose HttpErrors become JSON.

Every error body is built by :class:`voicebot.errors.HttpError` (the OpenAI shape); every
credential check is :func:`voicebot.transports.access.authorize`.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from voicebot.core import safe_json
from voicebot.errors import HttpError
from voicebot.transports.access import error_response

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]


def json_errors(handler: Handler) -> Handler:
    """Wrap a route handler so that an HttpError it raises is answered as OpenAI-shaped JSON."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except HttpError as err:
            return error_response(err)

    return wrapped


async def limited_stream(request: Request, limit: int, what: str = "Request body") -> AsyncGenerator[bytes, None]:
    """The body as it arrives, ended with 413 past ``limit`` bytes (the declared length is checked
    first, so an honest oversize request is refused before any of it is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"{what} exceeds the {limit} byte limit.", "request_too_large")
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"{what} exceeds the {limit} byte limit.", "request_too_large")
            yield chunk
    except ClientDisconnect:
        raise HttpError(400, f"The client went away while sending the {what.lower()}.",
                        "client_disconnected") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes before reading them all."""
    return b"".join([chunk async for chunk in limited_stream(request, limit)])


async def read_model(request: Request, model: type[M], limit: int, *, empty_ok: bool = False) -> M:
    raw = await read_body(request, limit)
    if not raw.strip():
        if empty_ok:
            return model()
        raise HttpError(400, "The request body is empty; send a JSON object.", "invalid_json")
    try:
        value: Any = safe_json.loads(raw)
    except safe_json.JsonError as exc:
        raise HttpError(400, f"The request body is not valid JSON: {exc}.", "invalid_json") from None
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        where = f" for '{param}'" if param else ""
        raise HttpError(400, f"Invalid value{where}: {first['msg']}.",
                        "missing_required_parameter" if first["type"] == "missing" else "invalid_value",
                        param) from None
