"""Command line: ``voicebot serve | models``.

Every ``serve`` flag is generated from :class:`voicebot.config.Settings`, and each can also be
given as a ``VOICEBOT_*`` environment variable.
"""

from __future__ import annotations

import os

# Before anything can load an OpenMP runtime: spinning OpenMP threads steal the cores the ASR
# and TTS need, and llama.cpp decode collapses (measured: 2 tok/s instead of 9 under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys

from voicebot import config


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from voicebot import logs
    from voicebot.server import create_app
    from voicebot.shutdown import serve

    settings = config.from_args(args)
    problems = config.startup_problems(settings)
    if not problems and settings.store != "memory":
        from voicebot.redis_store import unreachable

        problems = [problem] if (problem := unreachable(settings.store)) else []
    if problems:  # before any model loads: a refused start is instant
        for problem in problems:
            print(f"voicebot: {problem}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format, config.secrets(settings))
    app = create_app(settings)
    server_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.ssl_certfile or None,
        ssl_keyfile=settings.ssl_keyfile or None,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go through ours (format, ids, redaction)
        # Oversized messages up to twice the limit still get a protocol error event; beyond that
        # the socket is closed with 1009 before a byte is buffered.
        ws_max_size=settings.max_message_bytes * 2 + 1024,
        ws_ping_interval=20,
        ws_ping_timeout=20,
    )
    return serve(app, server_config, settings.shutdown_grace_s)


def _models(args: argparse.Namespace) -> int:
    from voicebot.models import main as prepare_models

    return prepare_models(["--cache-dir", args.cache_dir] if args.cache_dir else [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicebot",
        description="Realtime voice-to-voice assistant server speaking the OpenAI Realtime API "
        "(WebSocket /v1/realtime), with embedded offline VAD, ASR, LLM and TTS.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="Start the server (loads the models, then listens).",
        description="Start the server. Every flag can also be set as a VOICEBOT_* environment variable.",
    )
    config.add_arguments(serve)
    serve.set_defaults(func=_serve)
    models = sub.add_parser("models", help="Assemble and fully verify (sha256) the embedded model files, then exit.")
    models.add_argument("--cache-dir", default="", help="Where assembled files go (default: ~/.cache/voicebot/models).")
    models.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
