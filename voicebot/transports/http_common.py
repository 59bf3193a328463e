"""Shared pieces of the HTTP text API: OpenAI-shaped JSON errors, bounded JSON bodies, auth."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from voicebot.auth import bearer

if TYPE_CHECKING:
    from voicebot.server import AppState

M = TypeVar("M", bound=BaseModel)


class HttpError(Exception):
    """Raised inside a handler; becomes an OpenAI-style ``{"error": {...}}`` JSON response."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.code, self.param, self.type)


def error_response(status: int, message: str, code: str, param: str | None = None,
                   type: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"type": type, "code": code, "message": message, "param": param}},
                        status_code=status)


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.voicebot
    return state


def require_api_key(request: Request) -> None:
    """The long-lived API key in ``Authorization: Bearer`` (or an unscoped client token)."""
    state = app_state(request)
    key = bearer(request.headers)
    if not state.auth.accepts(key):
        raise HttpError(401, "Missing API key." if key is None else "Incorrect API key provided.", "invalid_api_key")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"Request body exceeds the {limit} byte limit.", "request_too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"Request body exceeds the {limit} byte limit.", "request_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HttpError(400, "The client went away while sending the body.", "client_disconnected") from None
    return b"".join(chunks)


async def read_model(request: Request, model: type[M], limit: int, *, empty_ok: bool = False) -> M:
    raw = await read_body(request, limit)
    if not raw.strip():
        if empty_ok:
            return model()
        raise HttpError(400, "The request body is empty; send a JSON object.", "invalid_json")
    try:
        value: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"The request body is not valid JSON: {exc}.", "invalid_json") from None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        where = f" for '{param}'" if param else ""
        raise HttpError(400, f"Invalid value{where}: {first['msg']}.",
                        "missing_required_parameter" if first["type"] == "missing" else "invalid_value",
                        param) from None
