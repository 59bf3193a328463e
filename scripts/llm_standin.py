"""A stand-in for a remote OpenAI-compatible LLM server: fixed time to first token, fixed rate.

    .venv/bin/python scripts/llm_standin.py --port 8100 [--ttft-ms 150] [--tokens-per-s 40]

It answers ``POST /v1/chat/completions`` (streamed or not) with a canned few-sentence reply,
after ``--ttft-ms``, one word-piece every 1/``--tokens-per-s`` seconds: the latency of a
GPU-served model, without a GPU. scripts/bench_sessions.py starts it to measure how many
sessions voicebot's own work (VAD, ASR, TTS, pacing, transports) carries when the LLM is elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPLY = ("Sure, I can help with that. Here is what I know about it, in a few words. "
         "It is a good question, and the short answer is yes. Let me know if you want more detail.")


def pieces() -> list[str]:
    words = REPLY.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def app(ttft_s: float, token_s: float) -> Starlette:
    async def completions(request: Request) -> Response:
        body = await request.json()
        limit = int(body.get("max_tokens") or 256)
        words = pieces()[:limit]
        created = int(time.time())
        if not body.get("stream"):
            await asyncio.sleep(ttft_s + token_s * len(words))
            return JSONResponse({"id": "chatcmpl-standin", "object": "chat.completion", "created": created,
                                 "model": body.get("model", "standin"),
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "".join(words)}}]})

        async def stream() -> AsyncIterator[bytes]:
            await asyncio.sleep(ttft_s)
            for i, word in enumerate(words):
                if i:
                    await asyncio.sleep(token_s)
                chunk = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": created,
                         "model": "standin", "choices": [{"index": 0, "delta": {"content": word},
                                                          "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=150)
    parser.add_argument("--tokens-per-s", type=float, default=40)
    args = parser.parse_args()
    uvicorn.run(app(args.ttft_ms / 1000, 1 / args.tokens_per_s), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
