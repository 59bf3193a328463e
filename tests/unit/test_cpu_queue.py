"""The engines' CPU queue: most urgent first, cancellable while waiting, slots never leak."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from voicebot.engines.cpu_queue import CpuQueue


class Gate:
    """A blocking call that holds its slot until released from the test."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.go = threading.Event()

    def __call__(self, label: str) -> str:
        self.started.set()
        assert self.go.wait(10)
        return label


async def _started(gate: Gate) -> None:
    assert await asyncio.to_thread(gate.started.wait, 10)


async def test_the_waiting_call_due_soonest_runs_first() -> None:
    queue = CpuQueue("t", slots=1)
    gate = Gate()
    order: list[str] = []

    def record(label: str) -> str:
        order.append(label)
        return label

    blocker = asyncio.create_task(queue.run(time.monotonic(), gate, "blocker"))
    await _started(gate)
    now = time.monotonic()
    late = asyncio.create_task(queue.run(now + 2.0, record, "late"))
    soon = asyncio.create_task(queue.run(now + 0.1, record, "soon"))
    middle = asyncio.create_task(queue.run(now + 1.0, record, "middle"))
    await asyncio.sleep(0.05)
    assert queue.waiting == 3 and order == []
    gate.go.set()
    assert list(await asyncio.gather(blocker, late, soon, middle)) == ["blocker", "late", "soon", "middle"]
    assert order == ["soon", "middle", "late"]
    assert queue.running == 0 and queue.stats.calls == 4


async def test_a_call_cancelled_while_waiting_never_runs_and_frees_nothing() -> None:
    queue = CpuQueue("t", slots=1)
    gate = Gate()
    ran: list[str] = []
    blocker = asyncio.create_task(queue.run(time.monotonic(), gate, "blocker"))
    await _started(gate)
    dropped = asyncio.create_task(queue.run(time.monotonic(), ran.append, "dropped"))
    await asyncio.sleep(0.05)
    dropped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert queue.running == 1, "the running call still holds the only slot"
    gate.go.set()
    await blocker
    # The stale entry of the cancelled call does not block the next one.
    assert await asyncio.wait_for(queue.run(time.monotonic(), lambda: "next"), 5) == "next"
    assert ran == [] and queue.stats.dropped == 1 and queue.running == 0


async def test_a_running_call_keeps_its_slot_until_its_thread_is_done() -> None:
    queue = CpuQueue("t", slots=1)
    gate = Gate()
    caller = asyncio.create_task(queue.run(time.monotonic(), gate, "abandoned"))
    await _started(gate)
    caller.cancel()  # the caller stops waiting; the thread cannot be stopped
    with pytest.raises(asyncio.CancelledError):
        await caller
    follower = asyncio.create_task(queue.run(time.monotonic(), lambda: "after"))
    await asyncio.sleep(0.05)
    assert not follower.done() and queue.running == 1
    gate.go.set()
    assert await asyncio.wait_for(follower, 5) == "after"
    assert queue.running == 0


async def test_slots_run_in_parallel_and_exceptions_reach_the_caller() -> None:
    queue = CpuQueue("t", slots=2)
    gates = [Gate(), Gate()]
    calls = [asyncio.create_task(queue.run(time.monotonic(), g, str(i))) for i, g in enumerate(gates)]
    for g in gates:
        await _started(g)  # both started: two slots
    assert queue.running == 2
    for g in gates:
        g.go.set()
    assert list(await asyncio.gather(*calls)) == ["0", "1"]

    def fail() -> None:
        raise ValueError("bad audio")

    with pytest.raises(ValueError, match="bad audio"):
        await queue.run(time.monotonic(), fail)
    assert queue.running == 0
