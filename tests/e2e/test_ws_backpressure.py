"""A WebSocket client that stops reading is disconnected (1008 "client is not reading") once the
server's bounded outbox is full, instead of the server buffering for it without bound."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.thread_server import ThreadServer
from voicebot.transports import realtime_ws

OUTBOX = 300


async def test_a_client_that_does_not_read_is_closed_with_1008(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realtime_ws, "MAX_OUTBOX_EVENTS", OUTBOX)
    with ThreadServer() as server:
        # max_queue=1: the client library stops reading the socket once one message waits.
        ws = await websockets.connect(server.url, max_queue=1, max_size=None)
        try:
            big = "x" * 20_000
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "id": "big", "type": "message", "role": "user", "content": [{"type": "input_text", "text": big}]}}))
            # Each retrieval is answered with the 20 KB item: far more than the socket buffers hold.
            for i in range(3000):
                await ws.send(json.dumps({"type": "conversation.item.retrieve", "item_id": "big", "event_id": f"e{i}"}))
            deadline = time.monotonic() + 30
            while server.call(lambda: len(server.state.sessions)) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert server.call(lambda: len(server.state.sessions)) == 0, "the session outlived its slow reader"
            received = 0
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(30):
                    while True:
                        await ws.recv()
                        received += 1
            assert ws.close_code == 1008 and ws.close_reason == "client is not reading", (ws.close_code,
                                                                                         ws.close_reason)
            assert received < 3000  # it was cut off, not served in full
        finally:
            await ws.close()


async def test_the_outbox_never_holds_more_than_its_bound() -> None:
    """Output the server produces by itself (a reply's audio) while the client reads nothing."""
    sink = realtime_ws.WebSocketSink(max_outbox=10)
    for i in range(50):
        sink.send_event({"type": "response.output_text.delta", "delta": str(i)})
    assert len(sink.outbox) == 10
    assert sink.overflowed.is_set()
