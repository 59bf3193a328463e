"""voicebot.core.limits: a session's longest life and longest idleness, on a fake clock."""

from __future__ import annotations

from voicebot.core.limits import SessionClock


def test_no_limits_means_no_checks() -> None:
    clock = SessionClock(100.0, 0, 0)
    assert clock.next_check(100.0) is None
    assert clock.expired(1e9) is None


def test_the_session_expires_at_its_maximum_duration_whatever_happens() -> None:
    clock = SessionClock(100.0, 3600, 0)
    clock.touch(3699.0)
    assert clock.expired(3699.9) is None
    assert clock.next_check(3000.0) == 700.0
    expiry = clock.expired(3700.0)
    assert expiry is not None and expiry.code == "session_expired"
    assert expiry.message == "Your session hit the maximum duration of 60 minutes."
    assert expiry.reason.startswith("session_expired: ") and len(expiry.reason.encode()) <= 123


def test_idleness_counts_from_the_last_activity_including_audio_still_to_play() -> None:
    clock = SessionClock(0.0, 0, 10)
    assert clock.next_check(4.0) == 6.0
    clock.touch(5.0)
    assert clock.expired(14.9) is None and clock.next_check(14.0) == 1.0
    clock.touch(20.0)  # the assistant's audio plays until t=20
    clock.touch(16.0)  # an earlier moment never moves it back
    assert clock.expired(29.9) is None
    expiry = clock.expired(30.0)
    assert expiry is not None and expiry.code == "idle_timeout" and "10 seconds" in expiry.message


def test_the_first_limit_to_run_out_is_reported() -> None:
    clock = SessionClock(0.0, 30, 10)
    assert clock.next_check(0.0) == 10.0
    clock.touch(25.0)
    assert clock.next_check(25.0) == 5.0
    expiry = clock.expired(30.0)
    assert expiry is not None and expiry.code == "session_expired"
