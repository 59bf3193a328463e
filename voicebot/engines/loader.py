"""Build the process-wide :class:`~voicebot.engines.base.Engines` from Settings.

Called once by the server's lifespan. Each load is timed and logged, because start-up time is
what an operator notices first; the embedded LLM is warmed up (system prompt evaluated into its
KV cache) so the first caller does not pay for it.

ASR, TTS and LLM are each embedded or remote (``--asr-base-url``, ``--tts-base-url``,
``--llm-base-url``), independently. A remote engine's embedded backend is neither imported nor
looked for on disk: with all three remote, no faster-whisper / CTranslate2, piper or llama.cpp
is loaded (tests/unit/test_remote_engines.py checks ``sys.modules``), and the process keeps only
the ear (VAD, the turn model, the echo canceller). The remote clients send many requests at once
(their servers queue on their side), so their queues admit more calls than the CPU-bound ones.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from voicebot.config import Settings
from voicebot.engines.base import Engines, LanguageModel, SpeechRecognizer, SpeechSynthesizer
from voicebot.engines.cpu_queue import CpuQueues
from voicebot.models import (
    Progress,
    default_cache_dir,
    llm_model_path,
    piper_voice_path,
    smart_turn_path,
    whisper_model_dir,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Requests at once to a remote ASR or TTS server (per process): it is network wait, not our CPU.
REMOTE_SLOTS = 16
#: Retries of a remote ASR/TTS request (connection failed, HTTP 408/409/429/5xx), with backoff.
REMOTE_RETRIES = 2


def _timed(what: str, make: Callable[[], T]) -> T:
    start = time.perf_counter()
    value = make()
    log.info("loaded %s in %.2f s", what, time.perf_counter() - start)
    return value


def load_llm(settings: Settings, progress: Progress | None = None) -> LanguageModel:
    """Remote when ``llm_base_url`` is set, else the embedded llama.cpp model (warmed up)."""
    if settings.llm_base_url:
        from voicebot.engines.llm_openai import OpenAIChatModel

        return OpenAIChatModel(settings.llm_base_url, settings.llm_model, settings.llm_api_key,
                               timeout=settings.llm_first_token_timeout_s, retries=settings.llm_retries)
    from voicebot.engines.llm_llamacpp import TOOLS_TEMPLATE, LlamaCppModel

    cache = Path(settings.model_dir) if settings.model_dir else default_cache_dir()
    path = _timed("LLM file check", lambda: llm_model_path(cache, progress))
    model = _timed(
        "LLM (llama.cpp)",
        lambda: LlamaCppModel(
            path, threads=settings.llm_threads, context=settings.llm_context, parallel=settings.llm_parallel,
            cache_ram_mib=settings.llm_cache_ram_mib, chat_template=TOOLS_TEMPLATE.read_text(),
        ),
    )
    seconds = model.warm_up(settings.instructions)
    log.info("LLM warm-up (system prompt cached) in %.2f s", seconds)
    return model


def load_asr(settings: Settings, cache: Path, progress: Progress | None = None) -> SpeechRecognizer:
    """Remote when ``asr_base_url`` is set, else the embedded Whisper."""
    if settings.asr_base_url:
        from voicebot.engines.asr_openai import OpenAITranscriber

        return OpenAITranscriber(settings.asr_base_url, settings.asr_remote_model, settings.asr_api_key,
                                 timeout=settings.engine_timeout_s, retries=REMOTE_RETRIES)
    from voicebot.engines.asr_whisper import WhisperRecognizer

    return _timed(
        f"ASR (whisper {settings.asr_model})",
        lambda: WhisperRecognizer(
            whisper_model_dir(settings.asr_model, cache, progress),
            name=settings.asr_model,
            workers=settings.asr_workers,
            threads=settings.asr_threads,
            min_window_s=settings.asr_window_s,
        ),
    )


def load_tts(settings: Settings) -> SpeechSynthesizer:
    """Remote when ``tts_base_url`` is set, else the embedded Piper voice."""
    if settings.tts_base_url:
        from voicebot.engines.tts_openai import OpenAISynthesizer

        return OpenAISynthesizer(settings.tts_base_url, settings.tts_remote_model, settings.tts_voice,
                                 settings.tts_api_key, speed=settings.tts_speed, timeout=settings.engine_timeout_s,
                                 retries=REMOTE_RETRIES)
    from voicebot.engines.tts_piper import PiperSynthesizer

    return _timed(
        "TTS (piper joe-medium)",
        lambda: PiperSynthesizer(piper_voice_path(), speed=settings.tts_speed, threads=settings.tts_threads),
    )


def load_engines(settings: Settings, progress: Progress | None = None) -> Engines:
    """Load VAD, ASR, LLM and TTS; raises ModelError with a fix when a model is missing."""
    from voicebot.engines.aec_webrtc import WebRtcEchoCanceller
    from voicebot.engines.turn_smart import SmartTurn
    from voicebot.engines.vad import make_vad_factory

    cache = Path(settings.model_dir) if settings.model_dir else default_cache_dir()
    vad = _timed("VAD (webrtcvad + silero v6)", make_vad_factory)
    asr = load_asr(settings, cache, progress)
    tts = load_tts(settings)
    turn = _timed("turn model (smart-turn v3.2)", lambda: SmartTurn(smart_turn_path(cache)))
    echo = WebRtcEchoCanceller if settings.echo_cancellation else None
    llm = load_llm(settings, progress)
    for role, url in (("ASR", settings.asr_base_url), ("TTS", settings.tts_base_url),
                      ("LLM", settings.llm_base_url)):
        if url:
            log.info("%s: remote, %s", role, url)
    cpu = CpuQueues.for_cores(asr_slots=_slots(settings.asr_workers, settings.asr_base_url),
                              tts_slots=_slots(settings.tts_workers, settings.tts_base_url))
    return Engines(vad=vad, asr=asr, llm=llm, tts=tts, turn=turn, echo=echo, cpu=cpu)


def _slots(workers: int, base_url: str) -> int:
    """A remote engine's calls wait on the network, not on our two cores: admit at least REMOTE_SLOTS."""
    return max(workers, REMOTE_SLOTS) if base_url else workers


async def close_engines(engines: Engines) -> None:
    """Release what needs releasing (HTTP clients, the llama.cpp server); safe to call twice."""
    for queue in (engines.cpu.asr, engines.cpu.tts):
        st = queue.stats
        if st.calls:
            log.info("%s queue: %d calls, %d dropped before running, mean wait %.0f ms (longest %.0f), "
                     "mean run %.0f ms", queue.name, st.calls, st.dropped, st.waited_ms / st.calls,
                     st.longest_wait_ms, st.ran_ms / st.calls)
    for engine in (engines.llm, engines.asr, engines.tts):
        aclose = getattr(engine, "aclose", None)
        if aclose is not None:
            result = aclose()
            if inspect.isawaitable(result):
                await result
            continue
        close = getattr(engine, "close", None)
        if close is not None:
            close()
