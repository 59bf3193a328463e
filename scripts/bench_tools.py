"""Function-calling quality and the cost of a tool round trip, through the official SDK's Realtime client.

30 prompts (tests below): 15 need one of four tools (weather, time, unit conversion, an order
lookup), 15 need none (some of them near misses: a sum while a converter is offered, the usual
climate while the weather is offered). Each prompt gets a fresh session with the server's default
instructions and the four tools, ``tool_choice`` auto. Measured per prompt:

* a needed call: the right function with the right arguments (case-insensitive substring match
  of the expected values), then the fake function's output goes back and the answer must contain
  its distinctive number ("uses the output");
* a no-tool prompt: any call at all counts as spurious;
* latency: question -> first call done, and output sent -> answer's first words (text) / first
  audio (voice): the price of the round trip.

``--voice`` asks each question as speech (Piper's voice at 24 kHz, the server's Whisper hears it)
and checks the spoken answer's transcript. The server must be running (``voicebot serve``).

    python scripts/bench_tools.py --url http://127.0.0.1:8000 [--voice] [--api-key K]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

from openai import AsyncOpenAI

TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"type": "function", "name": "get_time", "description": "Get the current local time in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"type": "function", "name": "convert_units", "description": "Convert a quantity from one unit to another",
     "parameters": {"type": "object", "properties": {"value": {"type": "number"}, "from_unit": {"type": "string"},
                                                      "to_unit": {"type": "string"}},
                    "required": ["value", "from_unit", "to_unit"]}},
    {"type": "function", "name": "lookup_order",
     "description": "Look up the status of a customer's order by its number",
     "parameters": {"type": "object", "properties": {"order_number": {"type": "string"}},
                    "required": ["order_number"]}},
]

#: (question, expected function, expected argument substrings, the function's output, what the answer must say)
NEEDS_TOOL: list[tuple[str, str, dict[str, str], dict[str, Any], str]] = [
    ("What's the weather like in Madrid right now?", "get_weather", {"city": "madrid"},
     {"temperature_c": 23, "sky": "clear"}, "23"),
    ("Is it raining in Dublin at the moment?", "get_weather", {"city": "dublin"},
     {"temperature_c": 11, "sky": "heavy rain"}, "11"),
    ("How warm is it in Cairo today?", "get_weather", {"city": "cairo"}, {"temperature_c": 34, "sky": "sunny"}, "34"),
    ("Do I need a coat in Toronto right now?", "get_weather", {"city": "toronto"},
     {"temperature_c": -4, "sky": "snow"}, "4"),
    ("What's the current weather in Lisbon?", "get_weather", {"city": "lisbon"},
     {"temperature_c": 19, "sky": "cloudy"}, "19"),
    ("What time is it in Tokyo right now?", "get_time", {"city": "tokyo"}, {"local_time": "21:47"}, "47"),
    ("What's the local time in Sydney?", "get_time", {"city": "sydney"}, {"local_time": "06:15"}, "15"),
    ("Can you tell me the time in New York?", "get_time", {"city": "new york"}, {"local_time": "08:32"}, "32"),
    ("What time is it in Berlin at the moment?", "get_time", {"city": "berlin"}, {"local_time": "13:05"}, "5"),
    ("How many kilometers are 26 miles?", "convert_units", {"from_unit": "mi", "to_unit": "k"},
     {"result": 41.84, "unit": "kilometers"}, "41"),
    ("Convert 5 pounds to kilograms.", "convert_units", {"from_unit": "pound", "to_unit": "kilo"},
     {"result": 2.27, "unit": "kilograms"}, "2"),
    ("What is 100 degrees Fahrenheit in Celsius?", "convert_units", {"from_unit": "f", "to_unit": "c"},
     {"result": 37.8, "unit": "degrees Celsius"}, "37"),
    ("Where is my order number 4417?", "lookup_order", {"order_number": "4417"},
     {"status": "shipped", "arrives": "Thursday", "carrier": "DHL"}, "thursday"),
    ("Can you check the status of order 9082?", "lookup_order", {"order_number": "9082"},
     {"status": "delayed", "arrives": "next Monday"}, "monday"),
    ("Has my order 1200 shipped yet?", "lookup_order", {"order_number": "1200"},
     {"status": "packed", "ships": "tomorrow"}, "tomorrow"),
]

NO_TOOL = [
    "Tell me a joke about cats.", "What is the capital of Italy?", "Say hello to my friend Anna.",
    "Why is the sky blue?", "Thanks, that's all for now.", "What is 12 times 7?", "How do I make a cup of tea?",
    "What's the weather usually like in Spain in summer?", "Who wrote Hamlet?", "Can you recommend a good book?",
    "What's your name?", "How many days are there in a week?", "Give me a tip for sleeping better.",
    "What does a kilometer measure?", "Good morning!",
]


@dataclass
class Outcome:
    needed: bool
    called: str | None = None
    arguments: dict[str, Any] | None = None
    correct: bool = False
    used_output: bool | None = None
    call_s: float | None = None
    answer_s: float | None = None
    heard: str = ""
    said: str = ""


async def run_one(sdk: AsyncOpenAI, question: str, voice: bool, tts: Any,
                  expect: tuple[str, dict[str, str], dict[str, Any], str] | None) -> Outcome:
    out = Outcome(needed=expect is not None)
    modality = "audio" if voice else "text"
    async with sdk.realtime.connect(model="voicebot") as conn:
        session: dict[str, Any] = {"type": "realtime", "output_modalities": [modality], "tools": TOOLS}
        if voice:
            session["audio"] = {"input": {"turn_detection": {"type": "server_vad"}}}
        await conn.session.update(session=session)
        events = conn.__aiter__()

        async def until(kind: str) -> Any:
            async for event in events:
                if event.type == "conversation.item.input_audio_transcription.completed":
                    out.heard = event.transcript
                if event.type == kind:
                    return event
            raise RuntimeError("connection closed")

        await until("session.updated")
        start = time.monotonic()
        if voice:
            pcm = tts(question)
            silence = bytes(24_000 * 2 // 2)
            for i in range(0, len(pcm) + len(silence) * 3, 4800):  # 100 ms chunks, real time, trailing silence
                chunk = (pcm + silence * 3)[i:i + 4800]
                await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
                await asyncio.sleep(0.1)
                if i == 0:
                    start = time.monotonic()
            start += len(pcm) / 48_000  # from the end of the question
        else:
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": question}]})
            await conn.response.create()
        done = await until("response.done")
        calls = [o for o in done.response.output or [] if o.type == "function_call"]
        if calls:
            out.call_s = time.monotonic() - start
            out.called = calls[0].name
            out.arguments = json.loads(calls[0].arguments or "{}")
        if expect is None or not calls:
            return out
        name, args, output, must_say = expect
        got = {k: str(v).lower() for k, v in (out.arguments or {}).items()}
        out.correct = out.called == name and all(v in got.get(k, "") for k, v in args.items())
        sent = time.monotonic()
        for call in calls:
            await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call.call_id,
                                                      "output": json.dumps(output)})
        await conn.response.create()
        first = await until("response.output_audio.delta" if voice else "response.output_text.delta")
        out.answer_s = time.monotonic() - sent
        del first
        final = await until("response.done")
        texts = [c.transcript or c.text or "" for o in final.response.output or [] if o.type == "message"
                 for c in o.content or []]
        out.said = " ".join(texts)
        out.used_output = must_say in out.said.lower()
        return out


def piper_24k() -> Any:
    from voicebot.core.audio import resample
    from voicebot.engines.tts_piper import PiperSynthesizer
    from voicebot.models import piper_voice_path

    tts = PiperSynthesizer(piper_voice_path())
    return lambda text: resample(tts.synthesize(text), tts.sample_rate, 24_000).astype("<i2").tobytes()


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=20)[int(q * 20) - 1] if len(values) >= 2 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--voice", action="store_true", help="ask by voice and check the spoken answers")
    args = parser.parse_args()
    sdk = AsyncOpenAI(base_url=f"{args.url}/v1", api_key=args.api_key, max_retries=0)
    tts = piper_24k() if args.voice else None
    outcomes: list[Outcome] = []
    cases = [(q, (n, a, o, m)) for q, n, a, o, m in NEEDS_TOOL] + [(q, None) for q in NO_TOOL]
    for question, expect in cases:
        o = await run_one(sdk, question, args.voice, tts, expect)
        outcomes.append(o)
        mark = ("OK " if o.correct and o.used_output else "BAD") if o.needed else ("BAD" if o.called else "OK ")
        print(f"{mark} {question!r} heard={o.heard!r} call={o.called}({o.arguments}) said={o.said[:90]!r}",
              flush=True)
    needed = [o for o in outcomes if o.needed]
    plain = [o for o in outcomes if not o.needed]
    correct = sum(o.correct for o in needed)
    used = sum(bool(o.used_output) for o in needed if o.correct)
    spurious = sum(o.called is not None for o in plain)
    print(f"\nmode: {'voice' if args.voice else 'text'}")
    print(f"correct tool and arguments: {correct}/{len(needed)} ({100 * correct / len(needed):.0f} %)")
    print(f"spurious calls on no-tool prompts: {spurious}/{len(plain)} ({100 * spurious / len(plain):.0f} %)")
    print(f"answer uses the output (of correct calls): {used}/{correct} ({100 * used / max(correct, 1):.0f} %)")
    for label, values in (("question -> call done", [o.call_s for o in needed if o.call_s]),
                          ("output sent -> answer starts", [o.answer_s for o in needed if o.answer_s])):
        vals = [v for v in values if v is not None]
        if vals:
            print(f"{label}: median {statistics.median(vals):.2f} s, p95 {pct(vals, 0.95):.2f} s (n={len(vals)})")


if __name__ == "__main__":
    asyncio.run(main())
