from __future__ import annotations

import pytest

from voicebot.core.ratelimit import WINDOW_S, RateLimiter


def test_a_minutes_worth_then_the_average_rate() -> None:
    limiter = RateLimiter(60)  # one a second on average
    assert [limiter.retry_after("a", 0.0) for _ in range(60)] == [0] * 60
    assert limiter.retry_after("a", 0.0) == 1  # the 61st within the same instant waits a second
    assert limiter.retry_after("b", 0.0) == 0, "another client has its own bucket"
    assert limiter.retry_after("a", 0.5) == 1  # a refused request does not spend the next token
    assert limiter.retry_after("a", 1.01) == 0
    assert limiter.retry_after("a", 1.02) == 1


def test_retry_after_is_whole_seconds_and_honest() -> None:
    limiter = RateLimiter(3)  # one every 20 s
    for _ in range(3):
        assert limiter.retry_after("k", 100.0) == 0
    wait = limiter.retry_after("k", 100.0)
    assert wait == 20
    assert limiter.retry_after("k", 100.0 + wait - 1) > 0
    assert limiter.retry_after("k", 100.0 + wait) == 0


def test_idle_clients_are_forgotten_and_memory_is_capped() -> None:
    limiter = RateLimiter(10, max_clients=50)
    for i in range(40):
        limiter.hit(f"ip:{i}", 0.0)
    assert len(limiter) == 40
    limiter.hit("late", WINDOW_S + 1)  # everyone else has been idle for a whole window
    for t in range(10):
        limiter.hit("late", WINDOW_S + 1 + t * 0.01)
    assert len(limiter) == 1
    for i in range(500):  # a flood of sources within one window never holds more than max_clients
        limiter.hit(f"spoof:{i}", 200.0)
    assert len(limiter) <= 51


def test_zero_is_not_a_limiter() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
