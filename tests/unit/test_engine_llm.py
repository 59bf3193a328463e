"""Embedded llama.cpp streaming: a tiny random-weight GGUF for the mechanics (fast), the real
Qwen model (loaded once per module) for answers and for stopping a generation mid-stream."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import scaled
from voicebot.engines.base import ChatMessage
from voicebot.engines.llm_llamacpp import LlamaCppModel
from voicebot.engines.threadstream import thread_stream
from voicebot.errors import EngineError, VoicebotError
from voicebot.models import llm_model_path

SYSTEM = ChatMessage("system", "You are a helpful assistant. Answer briefly.")


def write_tiny_gguf(path: Path, *, n_embd: int = 64, n_layer: int = 2, n_ctx: int = 2048, seed: int = 0) -> Path:
    """A ~0.5 MB llama-architecture GGUF with random weights and a byte-fallback vocabulary.

    It produces gibberish, but it exercises the whole runtime (load, chat template, sampling,
    streaming, slots, cancellation) in milliseconds.
    """
    import gguf

    rng = np.random.default_rng(seed)
    words = ["hello", "world", "the", "a", "is", "and", "you", "I", "voice", "bot"]
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tokens += [f"<0x{i:02X}>" for i in range(256)] + ["\u2581" + w for w in words]
    types = [2, 3, 3, 3, 3] + [6] * 256 + [1] * len(words)  # unknown, control, byte, normal
    n_vocab, n_head, n_ff = len(tokens), 4, 2 * n_embd
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", rand(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("voicebot-llm")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppModel]:
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    # Random weights may sample end-of-turn at any step; ignore it so lengths are predictable.
    model = LlamaCppModel(path, threads=1, context=1024, parallel=2, name="tiny", sampling={"ignore_eos": True})
    yield model
    model.close()


def user(text: str) -> list[ChatMessage]:
    return [SYSTEM, ChatMessage("user", text)]


# -- the thread bridge, with a fake producer (exact, no model) ---------------------------------


async def test_bridge_stops_producer_within_one_piece() -> None:
    emitted_after_stop: list[int] = []

    def producer(emit: Callable[[str], None], stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            emit(f"t{i} ")
            i += 1
            time.sleep(0.001)
        emitted_after_stop.append(i)

    it = thread_stream(producer)
    got = [await anext(it) for _ in range(5)]
    await it.aclose()
    assert got[:2] == ["t0 ", "t1 "]
    assert emitted_after_stop and stream_threads() == []


async def test_bridge_holds_a_producer_that_runs_ahead_of_its_consumer() -> None:
    """Backpressure: a consumer that stops taking pieces stops the producer after max_ahead."""
    produced: list[int] = []

    def producer(emit: Callable[[str], None], stop: threading.Event) -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            emit(f"t{i}")
            produced.append(i)

    it = thread_stream(producer, max_ahead=8)
    assert await anext(it) == "t0"
    await asyncio.sleep(0.5)  # the producer could have emitted all 10,000 by now
    assert 8 <= len(produced) <= 10, len(produced)
    assert [await anext(it) for _ in range(20)] == [f"t{i}" for i in range(1, 21)]
    await it.aclose()  # a producer blocked in emit sees stop and ends
    assert stream_threads() == []


async def test_bridge_turns_exceptions_into_engine_errors() -> None:
    def producer(emit: Callable[[str], None], stop: threading.Event) -> None:
        emit("partial")
        raise RuntimeError("boom")

    pieces: list[str] = []
    with pytest.raises(EngineError, match="boom"):
        async for piece in thread_stream(producer):
            pieces.append(piece)
    assert pieces == ["partial"] and stream_threads() == []


# -- the tiny GGUF through xllamacpp ----------------------------------------------------------


async def test_tiny_streams_pieces_up_to_max_tokens(tiny: LlamaCppModel) -> None:
    pieces = [p async for p in tiny.stream(user("hello"), max_tokens=12, temperature=0.8)]
    assert 0 < len(pieces) <= 12 and all(isinstance(p, str) and p for p in pieces)
    assert stream_threads() == []


def decodes_settle(model: LlamaCppModel) -> float:
    """llama_decode() calls so far, once the count stops moving (it must, after a cancel)."""
    count = model.metrics()["n_decode_total"]
    for _ in range(20):
        time.sleep(0.1)
        now = model.metrics()["n_decode_total"]
        if now == count:
            return now
        count = now
    raise AssertionError("llama.cpp keeps decoding after the stream was closed")


async def test_tiny_aclose_stops_generation_and_thread(tiny: LlamaCppModel) -> None:
    before_threads = threading.active_count()
    it = tiny.stream(user("hello"), max_tokens=100_000, temperature=1.0)
    assert [await anext(it) for _ in range(3)]
    assert stream_threads()  # the generation thread is running
    await it.aclose()
    at_close = tiny.metrics()["n_decode_total"]
    assert stream_threads() == []
    assert threading.active_count() == before_threads
    # Once aclose() returned, llama.cpp decodes at most the token already in flight.
    assert decodes_settle(tiny) - at_close <= 2


async def test_tiny_task_cancellation_stops_thread(tiny: LlamaCppModel) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in tiny.stream(user("hello"), max_tokens=100_000, temperature=1.0):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream_threads() == []


async def test_tiny_concurrent_streams_more_than_slots(tiny: LlamaCppModel) -> None:
    async def one(i: int) -> list[str]:
        return [p async for p in tiny.stream(user(f"hello {i}"), max_tokens=8, temperature=0.5)]

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(4))), 30)
    assert all(results) and stream_threads() == []


async def test_tiny_prompt_too_long_is_engine_error(tiny: LlamaCppModel) -> None:
    with pytest.raises(EngineError, match="context"):
        async for _ in tiny.stream(user("x " * 3000), max_tokens=4, temperature=0.0):
            pass
    assert isinstance(EngineError("x"), VoicebotError)


async def test_closed_model_refuses(tmp_path: Path) -> None:
    model = LlamaCppModel(write_tiny_gguf(tmp_path / "t.gguf"), threads=1, context=256, parallel=1)
    assert model.warm_up("be brief") >= 0
    assert model.listening_address.startswith("http://127.0.0.1:")
    model.close()
    with pytest.raises(EngineError, match="closed"):
        async for _ in model.stream(user("hi"), max_tokens=2, temperature=0.0):
            pass


async def test_generations_beyond_the_slots_wait_and_a_cancelled_waiter_leaves_cleanly(tmp_path: Path) -> None:
    model = LlamaCppModel(write_tiny_gguf(tmp_path / "t.gguf"), threads=1, context=256, parallel=1,
                          sampling={"ignore_eos": True})
    try:
        first = model.stream(user("one"), max_tokens=200, temperature=0.0)
        await anext(first)
        assert model.generating == 1
        second = model.stream(user("two"), max_tokens=2, temperature=0.0)
        waiting = asyncio.ensure_future(anext(second))
        await asyncio.sleep(0.3)
        assert not waiting.done() and model.waiting == 1 and model.generating == 1
        waiting.cancel()  # e.g. the response was cancelled while it waited
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert model.waiting == 0 and model.generating == 1
        third = model.stream(user("three"), max_tokens=2, temperature=0.0)
        third_first = asyncio.ensure_future(anext(third))
        await asyncio.sleep(0.2)
        assert not third_first.done()
        await first.aclose()  # the slot is free: the next in line runs
        assert isinstance(await asyncio.wait_for(third_first, scaled(30)), str)
        await third.aclose()
        assert model.generating == 0 and model.waiting == 0 and model._slots.free == 1
    finally:
        model.close()
    assert stream_threads() == []


# -- the real model (one load per module) -------------------------------------------------------


@pytest.fixture(scope="module")
def qwen() -> Iterator[LlamaCppModel]:
    model = LlamaCppModel(llm_model_path(), threads=2, context=2048, parallel=1)
    model.warm_up(SYSTEM.content)
    yield model
    model.close()


async def test_qwen_answers(qwen: LlamaCppModel) -> None:
    messages = user("What is two plus two? Reply with just the number.")
    text = "".join([p async for p in qwen.stream(messages, max_tokens=8, temperature=0.0)])
    assert "4" in text or "four" in text.lower(), text


async def test_qwen_cancel_frees_the_slot_at_once(qwen: LlamaCppModel) -> None:
    """parallel=1: if the cancelled story kept generating, the next request would wait for it."""
    before = decodes_settle(qwen)
    it = qwen.stream(user("Tell me a very long story about a lighthouse."), max_tokens=400, temperature=0.7)
    pieces = [await anext(it) for _ in range(5)]
    await it.aclose()
    at_close = qwen.metrics()["n_decode_total"]
    assert all(pieces) and stream_threads() == []
    settled = decodes_settle(qwen)
    assert settled - at_close <= 2  # stopped within the token in flight
    assert settled - before < 100  # nowhere near the 400 tokens asked for
    start = time.perf_counter()
    follow = qwen.stream(user("Say hi."), max_tokens=4, temperature=0.0)
    first = await anext(follow)
    elapsed = time.perf_counter() - start
    await follow.aclose()
    assert first
    # ~1 s on an idle machine; generous for loaded CI, still far below the 395 tokens left (> 15 s).
    assert elapsed < scaled(12.0)
