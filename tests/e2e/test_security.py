"""Who may use which endpoint, as one matrix over every entry point of a real server socket.

Each endpoint is tried with no credential, a wrong key, an expired client token, a token scoped to
another conversation, and (for the endpoints browsers open) a foreign ``Origin``; each must be
refused with the status and ``error.code`` the docs promise, and work with the right credential.
The limits are refused the same way (429, ``Retry-After`` where it applies). Fake engines: what is
under test is the HTTP/WebSocket boundary, not the models.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import scaled
from tests.thread_server import ThreadServer

KEY = "matrix-key"
GOOD_ORIGIN = "https://app.example"
SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@dataclass(frozen=True)
class Creds:
    """Ways to present a credential; ``None`` = nothing at all."""

    header: str | None = None  # Authorization: Bearer …
    query: str | None = None  # ?token=…
    origin: str | None = None


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    with ThreadServer(api_keys=(KEY,), allowed_origins=(GOOD_ORIGIN,), rate_limit_per_minute=0) as srv:
        yield srv


def expired_token(server: ThreadServer) -> str:
    token, _ = server.call(lambda: server.state.auth.tokens.mint(ttl_s=0.05))
    time.sleep(0.1)
    return token


def scoped_token(server: ThreadServer, conversation_id: str) -> str:
    answer = httpx.post(f"{server.http}/v1/conversations/{conversation_id}/token",
                        headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def new_conversation(server: ThreadServer) -> str:
    answer = httpx.post(f"{server.http}/v1/conversations", json={}, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def headers(creds: Creds) -> dict[str, str]:
    out = {}
    if creds.header is not None:
        out["Authorization"] = f"Bearer {creds.header}"
    if creds.origin is not None:
        out["Origin"] = creds.origin
    return out


def http_status(server: ThreadServer, method: str, path: str, creds: Creds, content_type: str | None = None,
                **body: object) -> tuple[int, str]:
    """Status and error code of one HTTP request (streams are only opened: their headers decide)."""
    url = f"{server.http}{path}" + (f"?token={creds.query}" if creds.query else "")
    sent = headers(creds) | ({"Content-Type": content_type} if content_type else {})
    with httpx.Client(timeout=scaled(10)) as http, http.stream(method, url, headers=sent, **body) as r:
        if r.status_code < 400:
            return r.status_code, ""
        r.read()
        return r.status_code, str(r.json()["error"]["code"])


def ws_status(server: ThreadServer, path: str, creds: Creds) -> tuple[int, str]:
    """101 if the handshake is accepted, else the refusal's status and error code."""
    url = f"ws://127.0.0.1:{server.port}{path}" + (f"{'&' if '?' in path else '?'}token={creds.query}"
                                                     if creds.query else "")

    async def go() -> tuple[int, str]:
        try:
            async with websockets.connect(url, additional_headers=headers(creds), open_timeout=scaled(10)):
                return 101, ""
        except InvalidStatus as refusal:
            body = json.loads(refusal.response.body or b"{}")
            return refusal.response.status_code, str(body.get("error", {}).get("code", ""))

    return asyncio.run(go())


Probe = Callable[[ThreadServer, Creds, str], tuple[int, str]]

#: Every entry point that needs a credential. ``conversation`` is a fresh conversation's id.
ENDPOINTS: dict[str, Probe] = {
    "realtime websocket": lambda s, c, _: ws_status(s, "/v1/realtime?model=voicebot", c),
    "chat completions": lambda s, c, _: http_status(s, "POST", "/v1/chat/completions", c, json={
        "model": "voicebot", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
    "create conversation": lambda s, c, _: http_status(s, "POST", "/v1/conversations", c, json={}),
    "read conversation": lambda s, c, conv: http_status(s, "GET", f"/v1/conversations/{conv}", c),
    "conversation events": lambda s, c, conv: http_status(s, "GET", f"/v1/conversations/{conv}/events", c),
    "post message": lambda s, c, conv: http_status(s, "POST", f"/v1/conversations/{conv}/messages", c,
                                                   json={"text": "hello"}),
    "client secrets": lambda s, c, _: http_status(s, "POST", "/v1/realtime/client_secrets", c, json={}),
    "webrtc offer": lambda s, c, _: http_status(s, "POST", "/v1/realtime/calls", c, content_type="application/sdp",
                                                content=SDP),
    "carrier media stream": lambda s, c, _: ws_status(s, "/telephony/twilio/media", c),
    "metrics": lambda s, c, _: http_status(s, "GET", "/metrics", c),
}
#: The ones a browser opens directly: a foreign Origin is refused there (403) even with a key.
BROWSER_ENDPOINTS = {"realtime websocket", "webrtc offer"}
#: Where an ek_ client token is not enough (only a key may mint; a carrier's URL carries the key).
KEY_ONLY = {"client secrets"}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_no_credential_and_a_wrong_key_are_refused_with_401(server: ThreadServer, endpoint: str) -> None:
    conversation = new_conversation(server)
    probe = ENDPOINTS[endpoint]
    assert probe(server, Creds(), conversation) == (401, "invalid_api_key")
    status, code = probe(server, Creds(header="not-the-key"), conversation)
    assert (status, code) == (401, "invalid_api_key")


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_an_expired_client_token_is_refused_with_401(server: ThreadServer, endpoint: str) -> None:
    conversation = new_conversation(server)
    status, code = ENDPOINTS[endpoint](server, Creds(header=expired_token(server)), conversation)
    assert status == 401 and code == "invalid_api_key"


@pytest.mark.parametrize("endpoint", ["conversation events", "carrier media stream", "realtime websocket"])
def test_an_expired_token_in_the_url_is_refused(server: ThreadServer, endpoint: str) -> None:
    conversation = new_conversation(server)
    status, code = ENDPOINTS[endpoint](server, Creds(query=expired_token(server)), conversation)
    assert status == 401 and code in ("invalid_token", "invalid_api_key")


def test_a_token_scoped_to_one_conversation_reads_only_that_one(server: ThreadServer) -> None:
    mine, other = new_conversation(server), new_conversation(server)
    token = scoped_token(server, mine)
    probe = ENDPOINTS["conversation events"]
    assert probe(server, Creds(query=token), other) == (401, "invalid_token")
    assert probe(server, Creds(query=token), mine)[0] == 200


@pytest.mark.parametrize("endpoint", sorted(BROWSER_ENDPOINTS))
def test_a_foreign_origin_is_refused_with_403_even_with_the_key(server: ThreadServer, endpoint: str) -> None:
    probe = ENDPOINTS[endpoint]
    assert probe(server, Creds(header=KEY, origin="https://evil.example"), "") == (403, "origin_not_allowed")
    assert probe(server, Creds(header=KEY, origin=GOOD_ORIGIN), "")[0] != 403


@pytest.mark.parametrize("endpoint", sorted(set(ENDPOINTS) - {"webrtc offer"}))
def test_the_right_credential_gets_in(server: ThreadServer, endpoint: str) -> None:
    """The other side of every refusal above: the key (and a fresh client token where tokens count)."""
    conversation = new_conversation(server)
    probe = ENDPOINTS[endpoint]
    creds = Creds(query=KEY) if endpoint == "carrier media stream" else Creds(header=KEY)
    status, code = probe(server, creds, conversation)
    assert status in (101, 200, 201, 202), (status, code)
    if endpoint not in KEY_ONLY | {"carrier media stream", "metrics"}:
        token, _ = server.call(lambda: server.state.auth.tokens.mint())
        assert probe(server, Creds(header=token), conversation)[0] in (101, 200, 201, 202)
    elif endpoint in KEY_ONLY:
        token, _ = server.call(lambda: server.state.auth.tokens.mint())
        assert probe(server, Creds(header=token), conversation) == (401, "invalid_api_key"), \
            "a client token cannot mint another (a leaked one cannot renew itself)"


def test_over_the_rate_limit_is_429_with_retry_after() -> None:
    with ThreadServer(api_keys=(KEY,), rate_limit_per_minute=5) as server:
        with httpx.Client(base_url=server.http, headers={"Authorization": f"Bearer {KEY}"}) as http:
            answers = [http.post("/v1/conversations", json={}) for _ in range(7)]
        assert [a.status_code for a in answers[:5]] == [201] * 5
        refused = answers[-1]
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["Retry-After"]) >= 1
        # Probes are never limited: a load balancer keeps seeing the instance.
        assert httpx.get(f"{server.http}/healthz").status_code == 200


async def test_over_the_session_limits_is_429() -> None:
    with ThreadServer(api_keys=(KEY,), max_sessions=1, rate_limit_per_minute=0) as server:
        url = f"ws://127.0.0.1:{server.port}/v1/realtime?model=voicebot"
        auth = {"Authorization": f"Bearer {KEY}"}
        async with websockets.connect(url, additional_headers=auth):
            with pytest.raises(InvalidStatus) as refusal:
                async with websockets.connect(url, additional_headers=auth):
                    pass
        assert refusal.value.response.status_code == 429
        assert json.loads(refusal.value.response.body or b"{}")["error"]["code"] == "too_many_sessions"
