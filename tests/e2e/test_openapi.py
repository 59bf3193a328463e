"""``/openapi.json`` fuzzed with schemathesis against a live server: no request, valid for the
document or not, may get a 5xx.

The server is uvicorn on loopback with fake engines (tests/thread_server.py), so a generated chat
completion costs milliseconds; its HTTP layer (parsing, validation, routing, errors) is the real
one. Each operation gets a bounded number of valid and of invalid cases (schemathesis' positive
and negative modes). The event streams are left out: with an id that exists they never end,
and with one that does not they answer 404 before reading anything else.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.session.fakes import SlowLlm
from tests.thread_server import ThreadServer

EXAMPLES = 30
SKIPPED = {"streamEvents", "streamEventsPost"}


@schemathesis.serializer("application/sdp")
def sdp(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    """A WebRTC offer is text: whatever schemathesis draws goes out as its UTF-8 (or as bytes)."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    with ThreadServer(llm=SlowLlm(reply="fine thanks", delay=0.0), rate_limit_per_minute=0) as s:
        yield s


def test_the_document_is_openapi_3_1_with_the_request_models(server: ThreadServer) -> None:
    doc = requests.get(f"{server.http}/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/chat/completions", "/v1/conversations", "/v1/conversations/{conversation_id}/messages",
            "/v1/conversations/{conversation_id}/events", "/v1/realtime/client_secrets", "/v1/realtime/calls",
            "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    # From the pydantic models the endpoints validate with: the same bounds as the server's.
    assert schemas["ExpiresAfter"]["properties"]["seconds"]["minimum"] == 10
    assert schemas["ExpiresAfter"]["properties"]["seconds"]["maximum"] == 7200
    assert schemas["ChatRequest"]["properties"]["messages"]["minItems"] == 1


def operations(server: ThreadServer) -> list[schemathesis.APIOperation]:  # type: ignore[name-defined]
    schema = schemathesis.openapi.from_url(f"{server.http}/openapi.json")
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) >= 14
    return [op for op in ops if op.definition.raw.get("operationId") not in SKIPPED]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_request_gets_a_server_error(server: ThreadServer, mode: GenerationMode) -> None:
    session = requests.Session()
    fuzzed = 0
    for operation in operations(server):

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=server.http, session=session, checks=[not_a_server_error],
                                   timeout=10)

        try:
            run()
            fuzzed += 1
        except Unsatisfiable:  # invalid cases of an operation with nothing to get wrong (GET /healthz)
            assert mode is GenerationMode.NEGATIVE, operation.label
    assert fuzzed >= (12 if mode is GenerationMode.POSITIVE else 5)  # 5: the operations with a body
