"""The same request gets the same answer on every transport: who may connect, and which conversation.

One real server (fake engines) and a real client per transport: ``websockets`` for the Realtime
WebSocket and a carrier's media stream, httpx for the HTTP API and WebRTC's SDP endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from scripts.phone_sim import PhoneCall
from tests.rtc_client import RtcClient
from tests.thread_server import ThreadServer

KEY = "one-answer-key"


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    with ThreadServer(api_keys=(KEY,), allowed_origins=("https://good.example",)) as s:
        yield s


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def ws_refusal(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, **kwargs):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body)


async def sdp_refusal(server: ThreadServer, query: str = "", headers: dict[str, str] | None = None
                      ) -> tuple[int, dict[str, Any]]:
    client = RtcClient()
    try:
        offer = await client.offer()
    finally:
        await client.close()
    async with httpx.AsyncClient(base_url=server.http) as http:
        r = await http.post(f"/v1/realtime/calls{query}", content=offer,
                            headers={"Content-Type": "application/sdp", **(headers or {})})
    return r.status_code, r.json()


def realtime(server: ThreadServer, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/v1/realtime?model=voicebot{query}"


def media(server: ThreadServer, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/telephony/twilio/media{query}"


async def test_an_unknown_conversation_is_the_same_404_everywhere(server: ThreadServer) -> None:
    query = "&conversation=conv_nope"
    answers = [
        await ws_refusal(realtime(server, query), additional_headers=bearer()),
        await sdp_refusal(server, "?conversation=conv_nope", bearer()),
        await ws_refusal(media(server, "?conversation=conv_nope"), additional_headers=bearer()),
    ]
    async with httpx.AsyncClient(base_url=server.http, headers=bearer()) as http:
        r = await http.get("/v1/conversations/conv_nope")
        answers.append((r.status_code, r.json()))
    expected = {"type": "invalid_request_error", "code": "conversation_not_found",
                "message": "Conversation 'conv_nope' does not exist.", "param": None}
    assert answers == [(404, {"error": expected})] * 4


async def test_a_phone_call_naming_an_unknown_conversation_is_refused_not_given_a_new_one(
        server: ThreadServer) -> None:
    """Twilio passes the conversation in the stream's start message, after the handshake."""
    async with websockets.connect(media(server), additional_headers=bearer()) as ws:
        await PhoneCall(ws).start({"conversation": "conv_nope"})
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008 and "conv_nope" in closed.value.rcvd.reason
    assert not server.state.sessions


async def test_a_known_conversation_is_joined_on_every_transport(server: ThreadServer) -> None:
    conversation = server.call(lambda: server.hub.create()).conversation
    async with websockets.connect(realtime(server, f"&conversation={conversation.id}"),
                                  additional_headers=bearer()) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        assert [s for s in server.state.sessions if s.conversation is conversation], "attached, not a new one"


async def test_missing_and_wrong_keys_are_the_same_401_everywhere(server: ThreadServer) -> None:
    for headers, message in (({}, "Missing API key."), (bearer("wrong"), "Incorrect API key provided.")):
        answers = [
            await ws_refusal(realtime(server), additional_headers=headers),
            await sdp_refusal(server, headers=headers),
        ]
        async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
            for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                                 ("POST", "/v1/conversations"), ("POST", "/v1/realtime/client_secrets")):
                r = await http.request(method, path, json={})
                answers.append((r.status_code, r.json()))
        for status, body in answers:
            assert status == 401
            assert body["error"]["code"] == "invalid_api_key"
            assert body["error"]["message"] == message
            assert body["error"]["type"] == "invalid_request_error"


async def test_a_foreign_origin_is_the_same_403_on_both_voice_endpoints(server: ThreadServer) -> None:
    origin = {"Origin": "https://evil.example"}
    answers = [
        await ws_refusal(realtime(server), additional_headers={**bearer(), **origin}),
        await sdp_refusal(server, headers={**bearer(), **origin}),
    ]
    assert [status for status, _ in answers] == [403, 403]
    assert {body["error"]["code"] for _, body in answers} == {"origin_not_allowed"}
    ok = await ws_refusal(realtime(server), additional_headers={**bearer("wrong"), "Origin": "https://good.example"})
    assert ok[0] == 401, "an allowed Origin still needs a key"


async def test_a_client_token_opens_voice_but_cannot_mint_more(server: ThreadServer) -> None:
    async with httpx.AsyncClient(base_url=server.http) as http:
        minted = (await http.post("/v1/realtime/client_secrets", headers=bearer(), json={})).json()
        token = minted["value"]
        again = await http.post("/v1/realtime/client_secrets", headers=bearer(token), json={})
        assert again.status_code == 401 and again.json()["error"]["code"] == "invalid_api_key"
        models = await http.get("/v1/models", headers=bearer(token))
        assert models.status_code == 200, "a client token is a credential for the API"
    protocols = ["realtime", f"openai-insecure-api-key.{token}"]
    async with websockets.connect(realtime(server), subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert json.loads(await ws.recv())["type"] == "session.created"
