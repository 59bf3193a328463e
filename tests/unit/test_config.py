"""Settings from flags and VOICEBOT_* variables, and the CLI a stranger reads first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from voicebot import config
from voicebot.__main__ import build_parser


def parse(*argv: str, env: dict[str, str] | None = None) -> config.Settings:
    args = build_parser().parse_args(["serve", *argv])
    return config.from_args(args, env or {})


def test_defaults_env_and_flag_precedence() -> None:
    assert parse().port == 8000
    assert parse(env={"VOICEBOT_PORT": "9000"}).port == 9000
    assert parse("--port", "9100", env={"VOICEBOT_PORT": "9000"}).port == 9100


def test_repeatable_keys_from_flags_or_comma_separated_env() -> None:
    assert parse("--api-key", "a", "--api-key", "b").api_keys == ("a", "b")
    assert parse("--api-keys", "a").api_keys == ("a",)
    assert parse(env={"VOICEBOT_API_KEYS": "a, b,,c"}).api_keys == ("a", "b", "c")
    assert parse().auth_required is False


def test_booleans_can_be_turned_off_from_flag_and_env() -> None:
    assert parse().speculative_replies is True
    assert parse("--no-speculative-replies").speculative_replies is False
    assert parse(env={"VOICEBOT_SPECULATIVE_REPLIES": "false"}).speculative_replies is False
    assert parse("--speculative-replies", env={"VOICEBOT_SPECULATIVE_REPLIES": "0"}).speculative_replies is True


def test_bad_choice_is_refused_with_usage() -> None:
    with pytest.raises(SystemExit):
        parse("--asr-model", "large")


def test_help_lists_every_setting_with_its_env_var() -> None:
    out = subprocess.run([sys.executable, "-m", "voicebot", "serve", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for f in config.Settings.__dataclass_fields__:
        assert f"VOICEBOT_{f.upper()}" in out  # argparse wraps at spaces, never inside a name
    assert "--api-key" in out and "--no-speculative-replies" in out


@pytest.mark.parametrize(("host", "keys", "insecure", "refused"), [
    ("127.0.0.1", (), False, False), ("::1", (), False, False), ("localhost", (), False, False),
    ("127.0.0.2", (), False, False), ("0.0.0.0", (), False, True), ("::", (), False, True),
    ("192.168.1.20", (), False, True), ("voice.example.com", (), False, True),
    ("0.0.0.0", ("k",), False, False), ("0.0.0.0", (), True, False),
])
def test_a_server_reachable_from_elsewhere_needs_a_key_or_insecure(host: str, keys: tuple[str, ...],
                                                                   insecure: bool, refused: bool) -> None:
    problems = config.startup_problems(config.from_env({}, host=host, api_keys=keys, insecure=insecure))
    assert bool(problems) is refused, problems
    assert all("--insecure" in p for p in problems)


def test_tls_needs_both_files_that_exist(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    assert config.startup_problems(config.from_env({}, ssl_certfile=str(cert))) == [
        "TLS needs both --ssl-certfile and --ssl-keyfile."]
    missing = config.startup_problems(config.from_env({}, ssl_certfile=str(cert), ssl_keyfile="/nope.pem"))
    assert missing == ["--ssl-keyfile /nope.pem: no such file."]
    assert config.startup_problems(config.from_env({}, ssl_certfile=str(cert), ssl_keyfile=str(cert))) == []


@pytest.mark.parametrize(("overrides", "says"), [
    ({"idle_timeout_s": -1.0}, "--idle-timeout-s -1: must not be negative."),
    ({"max_sessions_per_key": -2}, "--max-sessions-per-key -2: must not be negative."),
    ({"engine_timeout_s": -0.5}, "--engine-timeout-s -0.5: must not be negative."),
    ({"llm_parallel": 0}, "--llm-parallel 0: must be at least 1."),
    ({"tts_speed": 0.0}, "--tts-speed 0: must be above 0."),
])
def test_numbers_out_of_range_are_refused_at_start(overrides: dict[str, Any], says: str) -> None:
    assert says in config.startup_problems(config.from_env({}, **overrides))


def test_the_defaults_and_zero_meaning_off_are_fine() -> None:
    assert config.startup_problems(config.from_env({})) == []
    off = {"max_sessions": 0, "rate_limit_per_minute": 0, "max_session_seconds": 0.0, "idle_timeout_s": 0.0,
           "conversation_idle_ttl_s": 0.0, "llm_retries": 0}
    assert config.startup_problems(config.from_env({}, **off)) == []
