"""voicebot/logs.py: ids from contextvars on every line, JSON lines, and no secret ever written."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from voicebot import logs
from voicebot.config import from_env, secrets
from voicebot.tasks import OwnedTasks

KEY = "sk-live-abcdef123456"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.Redact([KEY]))
    logger = logging.getLogger("voicebot.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


@pytest.mark.parametrize(("line", "kept"), [
    ('127.0.0.1:5 - "GET /v1/conversations/c/events?token=ek_Zm9vYmFyYmF6cXV4&last_event_id=3 HTTP/1.1" 200',
     "last_event_id=3"),
    ('"WebSocket /media/twilio?key=sk-live-abcdef123456" [accepted]', "/media/twilio?key="),
    ("Authorization: Bearer sk-other-0123456789", "Authorization: Bearer "),
    ("subprotocols ['realtime', 'openai-insecure-api-key.sk-other-0123456789']", "'realtime'"),
    ("minted ek_abcdefghijklmnop for the page", "minted "),
    (f"remote LLM refused {KEY}", "remote LLM refused "),
])
def test_secrets_are_redacted_from_any_line(line: str, kept: str) -> None:
    out = logs.Redact([KEY]).redact(line)
    assert logs.REDACTED in out and kept in out
    for secret in ("ek_Zm9vYmFyYmF6cXV4", KEY, "sk-other-0123456789", "ek_abcdefghijklmnop"):
        assert secret not in out


def test_settings_name_every_configured_credential() -> None:
    settings = from_env({}, api_keys=("k1-aaaa",), llm_api_key="llm-bbbb", twilio_auth_token="tw-cccc",
                        ice_servers=("turn:user:turnpass@turn.example:3478", "stun:stun.example:3478"))
    assert {"k1-aaaa", "llm-bbbb", "tw-cccc", "turnpass"} <= set(secrets(settings))


async def test_ids_bound_by_an_owner_reach_its_tasks_and_worker_threads(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())

    async def reply() -> None:
        logs.bind(response_id="resp_1")
        logger.info("in the reply")
        await asyncio.to_thread(logger.info, "in a worker thread")

    async def session() -> None:
        logs.bind(session_id="sess_1", conversation_id="conv_1", transport="realtime_ws")
        tasks = OwnedTasks("sess_1", lambda task, exc: None)
        await tasks.spawn(reply(), "reply")
        logger.info("back in the session")
        try:
            raise ValueError(f"bad key {KEY}")
        except ValueError:
            logger.exception("failed")

    await asyncio.create_task(session())
    logger.info("outside any session")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_message = {line["message"]: line for line in lines}
    assert by_message["in the reply"]["response_id"] == "resp_1"
    assert by_message["in a worker thread"]["session_id"] == "sess_1"
    assert by_message["in a worker thread"]["response_id"] == "resp_1"
    assert "response_id" not in by_message["back in the session"]  # the reply's id stayed in its task
    assert by_message["back in the session"]["transport"] == "realtime_ws"
    assert "session_id" not in by_message["outside any session"]
    failed = by_message["failed"]
    assert failed["level"] == "error" and "ValueError" in failed["exc_info"]
    assert KEY not in stream.getvalue()
    assert {"ts", "level", "logger", "message"} <= set(failed)


async def test_text_lines_carry_the_ids_as_a_prefix(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream, handler = captured
    handler.setFormatter(logs.TextFormatter())

    async def session() -> None:
        logs.bind(session_id="sess_9", response_id="resp_9")
        logger.warning("slow")

    await asyncio.create_task(session())
    assert stream.getvalue().rstrip().endswith("WARNING voicebot.test_logs: [sess_9 resp_9] slow")


async def test_only_the_false_handshake_error_after_a_refusal_is_dropped() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RefusalNoise())
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(handler)
    spurious = "ASGI callable returned without completing handshake."

    async def refused() -> None:
        logs.handshake_refused()  # what access.refuse does before the denial response
        await asyncio.sleep(0)  # another connection's lines may come in between
        uvicorn_error.error(spurious)

    async def broken_endpoint() -> None:  # returned without accepting or refusing: a real bug
        await asyncio.sleep(0)
        uvicorn_error.error(spurious)

    try:
        await asyncio.gather(refused(), broken_endpoint())
    finally:
        uvicorn_error.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines == [spurious], "the broken endpoint's line stays, the refused connection's goes"
