"""One frozen Settings object, filled from CLI flags and ``VOICEBOT_*`` environment variables.

Every setting is declared once in ``SETTINGS_HELP`` order through the dataclass fields; the CLI
(`voicebot serve --help`) is generated from them, so a flag, its env var and its default can
never drift apart. Precedence: CLI flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_INSTRUCTIONS = (
    "You are voicebot, a friendly voice assistant. Your replies are spoken aloud, so answer in one to "
    "three short, natural sentences. Never use lists, markdown, code, emoji or URLs. If you did not "
    "understand, ask briefly."
)


def _meta(help: str, *, choices: Sequence[str] | None = None, repeat: bool = False) -> dict[str, Any]:
    return {"help": help, "choices": choices, "repeat": repeat}


@dataclass(frozen=True, slots=True)
class Settings:
    # Network
    host: str = field(default="127.0.0.1", metadata=_meta(
        "Address to bind. Anything but loopback needs --api-key (or --insecure)."))
    port: int = field(default=8000, metadata=_meta("TCP port to listen on."))
    insecure: bool = field(default=False, metadata=_meta(
        "Listen on a non-loopback --host without API keys: anyone who can reach it can use it."))
    ssl_certfile: str = field(default="", metadata=_meta(
        "TLS certificate (PEM) to serve https:// and wss:// directly; needs --ssl-keyfile."))
    ssl_keyfile: str = field(default="", metadata=_meta("TLS private key (PEM) for --ssl-certfile."))
    api_keys: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "API key clients must present (Bearer header, or the `openai-insecure-api-key.` "
            "subprotocol). Repeatable; env: comma-separated. Empty = no auth.",
            repeat=True,
        ),
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "Browser Origins allowed to open WebSockets and to call the HTTP API (CORS) besides "
            "same-origin. Repeatable; '*' allows any. Requests without an Origin header (non-browsers) "
            "are always allowed.",
            repeat=True,
        ),
    )
    max_sessions: int = field(default=32, metadata=_meta(
        "Most realtime sessions open at once, over every transport (WebSocket, WebRTC, phone calls); "
        "one more is refused with 429 too_many_sessions. 0 = no limit."))
    max_sessions_per_key: int = field(default=8, metadata=_meta(
        "Most realtime sessions open at once per API key (a client token counts against the key that "
        "minted it); one more is refused with 429 too_many_sessions_for_key. Not counted without API keys. "
        "0 = no limit."))
    max_session_seconds: float = field(default=3600.0, metadata=_meta(
        "A realtime session open this long is ended: an error event (session_expired), then WebSocket "
        "close 1008 or a hangup. 0 = no limit."))
    idle_timeout_s: float = field(default=600.0, metadata=_meta(
        "A realtime session with no client event and no speech heard for this long, while the assistant "
        "is silent, is ended: an error event (idle_timeout), then close 1008 or a hangup. Silence streamed "
        "by a microphone is idle. 0 = never."))
    max_turn_seconds: float = field(default=30.0, metadata=_meta(
        "Longest user turn: continuous speech this long ends the turn as if the person had paused; with "
        "turn detection off, appends past this much buffered audio are refused (input_audio_buffer_full). "
        "0 = 15 minutes."))
    rate_limit_per_minute: int = field(default=600, metadata=_meta(
        "HTTP API requests (and WebSocket handshakes) per minute per API key (a client token counts for "
        "the key that minted it) or, without a valid credential, per client IP; more get 429 "
        "rate_limit_exceeded with Retry-After. /healthz, /readyz, /metrics and the page are not counted. "
        "0 = no limit."))
    max_message_bytes: int = field(
        default=15 * 1024 * 1024, metadata=_meta("Largest client WebSocket message accepted (bytes).")
    )
    web_dir: str = field(default="", metadata=_meta("Directory of the demo page (default: the bundled web/)."))
    demo_page_tokens: bool = field(
        default=False,
        metadata=_meta(
            "Let the demo page get short-lived client tokens from POST /v1/demo/client_secret without an "
            "API key (same-origin browsers only). Only matters when API keys are set: anyone who can load "
            "the page can then talk to the server."
        ),
    )
    log_level: str = field(
        default="info", metadata=_meta("Logging level.", choices=("debug", "info", "warning", "error"))
    )
    log_format: str = field(default="text", metadata=_meta(
        "Log lines as text (with a [session response] prefix inside a session) or json (one object per line: "
        "ts, level, logger, message, session_id, response_id, conversation_id, transport, exc_info). Secrets "
        "and ?token= query strings are redacted either way.", choices=("text", "json")))
    shutdown_grace_s: float = field(default=10.0, metadata=_meta(
        "On SIGTERM or Ctrl-C: new connections and requests get 503 shutting_down at once, replies being "
        "spoken or streamed get this many seconds to finish, then WebSockets close with 1001, SSE streams "
        "end with a shutdown event and calls hang up. A second Ctrl-C stops at once."))

    # Conversation defaults (a client may override per session with session.update)
    instructions: str = field(default=DEFAULT_INSTRUCTIONS, metadata=_meta("Default system prompt."))
    max_response_tokens: int = field(default=256, metadata=_meta("Upper bound on tokens per reply."))
    temperature: float = field(default=0.7, metadata=_meta("LLM sampling temperature."))

    # Engines
    asr_model: str = field(
        default="tiny.en",
        metadata=_meta("Embedded Whisper model: tiny.en (fast) or base (multilingual, slower).",
                       choices=("tiny.en", "base")),
    )
    asr_language: str = field(default="en", metadata=_meta("Language hint for the ASR ('' = detect)."))
    asr_workers: int = field(default=2, metadata=_meta("Parallel ASR workers (sessions transcribing at once)."))
    asr_threads: int = field(
        default=2,
        metadata=_meta("CPU threads per ASR call. 2 makes one transcription ~40% faster on 2 cores "
                       "(0.5 s vs 0.82 s for a 3 s utterance), which is what a speaker waits for."),
    )
    asr_window_s: float = field(
        default=10.0,
        metadata=_meta("Shortest Whisper window (seconds): a turn is encoded in a window of its own length, "
                       "at least this long, instead of Whisper's fixed 30 s (2x faster on 2 cores, same WER; "
                       "shorter windows make the model repeat itself). 0 = always 30 s."),
    )
    llm_base_url: str = field(
        default="",
        metadata=_meta("OpenAI-compatible chat endpoint (e.g. http://host:8080/v1). Empty = embedded llama.cpp."),
    )
    llm_model: str = field(default="", metadata=_meta("Model name for the remote LLM endpoint."))
    llm_api_key: str = field(default="", metadata=_meta("API key for the remote LLM endpoint."))
    asr_base_url: str = field(default="", metadata=_meta(
        "OpenAI-compatible speech-to-text server (its /v1/audio/transcriptions, e.g. http://host:8000/v1; "
        "another voicebot is one). Empty = the embedded Whisper."))
    asr_remote_model: str = field(default="whisper-1", metadata=_meta("Model name sent to --asr-base-url."))
    asr_api_key: str = field(default="", metadata=_meta("API key for --asr-base-url."))
    tts_base_url: str = field(default="", metadata=_meta(
        "OpenAI-compatible text-to-speech server (its /v1/audio/speech, streamed; e.g. http://host:8000/v1). "
        "Empty = the embedded Piper voice."))
    tts_remote_model: str = field(default="tts-1", metadata=_meta("Model name sent to --tts-base-url."))
    tts_voice: str = field(default="alloy", metadata=_meta("Voice name sent to --tts-base-url."))
    tts_api_key: str = field(default="", metadata=_meta("API key for --tts-base-url."))
    llm_retries: int = field(default=2, metadata=_meta(
        "Retries of a remote LLM request that could not connect or got HTTP 429/5xx, before its first "
        "token only (with exponential backoff); then the response fails with llm_failed."))
    engine_timeout_s: float = field(default=30.0, metadata=_meta(
        "Longest one ASR call (a turn's transcription) or one TTS call (a clause) may take, waiting for a "
        "free worker included; a stalled engine fails the turn with an engine_timeout error."))
    llm_first_token_timeout_s: float = field(default=30.0, metadata=_meta(
        "Longest the LLM may take to its first token (prompt evaluation, a remote server's queue and "
        "connection included); then the response fails with engine_timeout."))
    llm_token_timeout_s: float = field(default=30.0, metadata=_meta(
        "Longest gap between two LLM tokens before the response fails with engine_timeout. Generous: on a "
        "busy CPU another conversation's cold prompt evaluation pauses every reply's decoding for seconds "
        "(measured: 10 s failed 20 of 65 turns of 4 people with --llm-cache-ram-mib 0)."))
    llm_threads: int = field(default=2, metadata=_meta("CPU threads for the embedded LLM."))
    llm_context: int = field(default=4096, metadata=_meta(
        "Context window (tokens) per conversation: the embedded LLM's size, and what a conversation's "
        "history is fitted into (the oldest turns leave first; truncation \"auto\"), remote LLMs included."))
    llm_parallel: int = field(
        default=3, metadata=_meta("Concurrent generation slots in the embedded LLM (one per active reply).")
    )
    llm_cache_ram_mib: int = field(default=1024, metadata=_meta(
        "RAM (MiB) the embedded LLM may keep evaluated prompts of conversations that lost their slot in, "
        "so they resume without a cold prompt evaluation. The server's RSS grows by up to this much as "
        "conversations come and go, then stays. 0 = keep none."))
    model_dir: str = field(
        default="",
        metadata=_meta("Where assembled model files are kept (default: ~/.cache/voicebot/models)."),
    )
    tts_threads: int = field(default=1, metadata=_meta("CPU threads per speech synthesis (one clause)."))
    tts_workers: int = field(
        default=2, metadata=_meta("Speech syntheses at once over all sessions; the rest wait, the listener "
                                  "whose audio runs out soonest first.")
    )
    tts_speed: float = field(default=1.0, metadata=_meta("Speech rate multiplier for the synthesized voice."))

    # Shared state (docs/deploy.md)
    store: str = field(default="memory", metadata=_meta(
        "Where conversations, their event logs and client tokens live: 'memory' (this process only) or "
        "redis://host:port/db, shared by every instance behind a load balancer (refuses to start if Redis "
        "cannot be reached)."))

    # Text over SSE (docs/protocol.md "Text over SSE")
    sse_heartbeat_s: float = field(
        default=15.0, metadata=_meta("Seconds between SSE comment heartbeats (proxies close idle streams).")
    )
    sse_retry_ms: int = field(default=1000, metadata=_meta("Reconnect delay sent to EventSource clients (retry:)."))
    sse_log_events: int = field(
        default=4096, metadata=_meta("Events kept per conversation for Last-Event-ID resume (older -> reset event).")
    )
    sse_listener_queue: int = field(
        default=4096,
        metadata=_meta("Events queued for one slow SSE reader before its stream is ended (it resumes from the log)."),
    )
    sse_token_ttl_s: float = field(default=300.0, metadata=_meta("Lifetime of EventSource URL tokens (seconds)."))
    max_text_bytes: int = field(
        default=256 * 1024, metadata=_meta("Largest JSON body of the HTTP text API (chat completions, messages).")
    )
    max_audio_upload_bytes: int = field(
        default=25 * 1024 * 1024, metadata=_meta("Largest upload to POST /v1/audio/transcriptions (OpenAI's 25 MiB).")
    )
    max_conversations: int = field(default=10_000, metadata=_meta(
        "HTTP conversations kept in memory at once; one more is refused with 429 too_many_conversations "
        "(idle ones expire: --conversation-idle-ttl-s)."))
    conversation_idle_ttl_s: float = field(default=3600.0, metadata=_meta(
        "An HTTP conversation with no request, no event stream and no voice session on it for this many "
        "seconds is forgotten (then 404 conversation_not_found). 0 = never."))
    max_conversation_items: int = field(default=2000, metadata=_meta(
        "Items one conversation keeps (any transport); past it the oldest non-system items are evicted "
        "(conversation.item.deleted). 0 = no cap."))
    max_conversation_bytes: int = field(default=8 * 1024 * 1024, metadata=_meta(
        "Text (UTF-8 bytes of messages and transcripts) one conversation keeps; past it the oldest "
        "non-system items are evicted, and one item larger than this alone is refused. 0 = no cap."))

    # Telephony (docs/telephony.md)
    public_url: str = field(
        default="",
        metadata=_meta("Public base URL callers' carriers reach this server at, e.g. https://voice.example.com "
                       "(TwiML stream URL, Twilio signatures). Empty = the request's own URL."),
    )
    twilio_auth_token: str = field(
        default="",
        metadata=_meta("Twilio auth token: when set, X-Twilio-Signature is verified on the TwiML webhook and the "
                       "media WebSocket, and unsigned requests get 403."),
    )
    dtmf_interrupts: bool = field(
        default=True, metadata=_meta("A keypad press stops the assistant's reply (like speech does).")
    )
    telephony_lead_ms: int = field(
        default=100,
        metadata=_meta("How far ahead of real time 20 ms frames are sent to a carrier (small = exact barge-in)."),
    )

    # WebRTC (POST /v1/realtime/calls, docs/webrtc.md)
    ice_servers: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "STUN/TURN server for WebRTC calls: 'stun:host:port' or 'turn:user:password@host:port' "
            "(add '?transport=tcp' for TCP). Repeatable; env: comma-separated. Empty = host candidates "
            "only (no traffic to any public server).",
            repeat=True,
        ),
    )
    webrtc_connect_timeout_s: float = field(
        default=15.0, metadata=_meta("A WebRTC call that has not connected after this many seconds is torn down.")
    )
    webrtc_media_timeout_s: float = field(
        default=10.0,
        metadata=_meta("A connected WebRTC call whose peer sends no audio for this many seconds is torn down."),
    )
    webrtc_output_lead_ms: int = field(
        default=120,
        metadata=_meta(
            "How far ahead of real time the reply feeds a WebRTC call's outbound track (the track plays "
            "in real time; the browser's jitter buffer absorbs the network)."
        ),
    )
    webrtc_max_calls: int = field(default=32, metadata=_meta("Concurrent WebRTC calls; more get HTTP 503."))

    echo_cancellation: bool = field(
        default=True,
        metadata=_meta("Cancel the assistant's own voice in the microphone audio (WebRTC AEC3 against what "
                       "the listener is playing), so a speakerphone or a leaky headset does not interrupt it."),
    )
    speculative_replies: bool = field(
        default=True,
        metadata=_meta("Start thinking about the reply during the user's pause (transcribed at 200 ms "
                       "of silence); it is spoken only if the pause ends the turn, else dropped."),
    )

    # Output pacing
    output_lead_ms: int = field(
        default=600,
        metadata=_meta(
            "How far ahead of real time assistant audio is sent. Small = exact truncation on barge-in; "
            "large = tolerant of network jitter."
        ),
    )

    @property
    def history_budget_tokens(self) -> int:
        """What a conversation's history may take of the context: the rest is the reply's."""
        return max(256, self.llm_context - self.max_response_tokens)

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


#: Settings that count workers, threads or tokens: 0 would mean a server that cannot answer.
AT_LEAST_ONE = ("asr_workers", "asr_threads", "llm_threads", "llm_parallel", "llm_context", "tts_threads",
                "tts_workers", "max_response_tokens")


#: What --store accepts besides "memory" (the schemes of redis-py's from_url).
STORE_SCHEMES = ("redis://", "rediss://", "unix://")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def startup_problems(settings: Settings) -> list[str]:
    """What makes these settings unsafe or impossible to serve with (empty = fine)."""
    problems = []
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value < 0:  # no number here means anything below zero (0 = off, where off exists)
            problems.append(f"{_flag(f.name)} {value:g}: must not be negative.")
        elif f.name in AT_LEAST_ONE and value < 1:
            problems.append(f"{_flag(f.name)} {value:g}: must be at least 1.")
    if settings.tts_speed <= 0:
        problems.append(f"--tts-speed {settings.tts_speed:g}: must be above 0.")
    if not is_loopback(settings.host) and not settings.auth_required and not settings.insecure:
        problems.append(f"--host {settings.host} is reachable from other machines, and no --api-key is set: "
                        "anyone could use this server. Set --api-key (or VOICEBOT_API_KEYS), or pass "
                        "--insecure if that is really what you want.")
    if settings.store != "memory" and not settings.store.startswith(STORE_SCHEMES):
        problems.append(f"--store {settings.store}: use 'memory' or a Redis URL (redis://host:port/db, "
                        "rediss:// for TLS, unix:///path/redis.sock).")
    if bool(settings.ssl_certfile) != bool(settings.ssl_keyfile):
        problems.append("TLS needs both --ssl-certfile and --ssl-keyfile.")
    for flag, path in (("--ssl-certfile", settings.ssl_certfile), ("--ssl-keyfile", settings.ssl_keyfile)):
        if path and not os.path.isfile(path):
            problems.append(f"{flag} {path}: no such file.")
    return problems


def secrets(settings: Settings) -> list[str]:
    """Every configured credential: never to appear in a log line."""
    turn_passwords = [server.split("@", 1)[0].rpartition(":")[2] for server in settings.ice_servers if "@" in server]
    return [*settings.api_keys, settings.llm_api_key, settings.asr_api_key, settings.tts_api_key,
            settings.twilio_auth_token, *turn_passwords]


def _env_name(name: str) -> str:
    return "VOICEBOT_" + name.upper()


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    if f.metadata.get("repeat"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    kind: type[Any] = type(f.default)
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return kind(raw)


def from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``VOICEBOT_*`` variables, then explicit overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = env.get(_env_name(f.name))
        if raw is not None:
            values[f.name] = _convert(f, raw)
    values.update(overrides)
    return Settings(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per setting; its help names the env var and shows the default."""
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        # argparse %-formats help strings: a literal "%" in a description must be doubled.
        help_text = f"{f.metadata['help']} [env {_env_name(f.name)}]".replace("%", "%%")
        if f.metadata.get("repeat"):
            # Given once per value, so the flag reads singular: --api-key A --api-key B.
            singular = flag.removesuffix("s")
            parser.add_argument(singular, flag, dest=f.name, action="append", default=None, help=help_text,
                                metavar="VALUE")
            continue
        if isinstance(f.default, bool):  # type=bool would read "--flag false" as True
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {'on' if f.default else 'off'})")
            continue
        shown = repr(f.default) if isinstance(f.default, str) and len(f.default) < 60 else f.default
        if isinstance(f.default, str) and len(f.default) >= 60:
            shown = "a short voice-assistant prompt"
        parser.add_argument(
            flag,
            type=type(f.default),
            default=None,
            choices=f.metadata.get("choices"),
            help=f"{help_text} (default: {shown})",
        )


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        overrides[f.name] = tuple(value) if f.metadata.get("repeat") else value
    return from_env(env, **overrides)
