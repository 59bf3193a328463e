"""The remote ASR and TTS engines (--asr-base-url, --tts-base-url) against a real HTTP stand-in.

The stand-in (starlette on uvicorn, on a loopback port, in a thread) implements OpenAI's
``/v1/audio/transcriptions`` (multipart, checked field by field, the WAV decoded) and
``/v1/audio/speech`` (raw 24 kHz s16le streamed in chunks that split samples), and can be told to
fail the next requests, stall, or cut a body short. Also: an instance with all three engines
remote imports no model runtime (checked in a fresh interpreter).
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port, scaled
from voicebot.engines import asr_openai, openai_audio
from voicebot.engines.asr_openai import OpenAITranscriber
from voicebot.engines.tts_openai import PCM_RATE, OpenAISynthesizer
from voicebot.errors import EngineError

CHUNK_BYTES = 1001  # odd: every other chunk boundary splits a sample


def tone(seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def wav(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


@dataclass
class Standin:
    """What the server saw, and what it will do next."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    fail: list[int] = field(default_factory=list)  # HTTP statuses for the next requests, in order
    delay_s: float = 0.0
    cut_next_body: bool = False  # the next speech body stops mid-stream (the connection breaks)
    pcm: bytes = (tone(0.5, PCM_RATE) * 32767).astype("<i2").tobytes()
    speech_media: str = "audio/pcm"
    speech_body: bytes | None = None  # instead of pcm (e.g. a WAV)
    chunks_sent: int = 0

    def failure(self) -> Response | None:
        if not self.fail:
            return None
        status = self.fail.pop(0)
        return JSONResponse({"error": {"message": f"stand-in says {status}", "type": "server_error",
                                       "code": None}}, status_code=status)

    async def transcriptions(self, request: Request) -> Response:
        form = await request.form()
        upload = form["file"]
        assert isinstance(upload, UploadFile)
        data = await upload.read()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        self.requests.append({"path": request.url.path, "fields": fields, "filename": upload.filename,
                              "content_type": upload.content_type, "file": data,
                              "authorization": request.headers.get("authorization"),
                              "request_type": request.headers.get("content-type", "")})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        failed = self.failure()
        if failed is not None:
            return failed
        return JSONResponse({"text": " hello world "})

    async def speech(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"path": request.url.path, "json": body,
                              "authorization": request.headers.get("authorization")})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        failed = self.failure()
        if failed is not None:
            return failed
        payload = self.speech_body if self.speech_body is not None else self.pcm
        cut, self.cut_next_body = self.cut_next_body, False

        async def stream() -> AsyncIterator[bytes]:
            for start in range(0, len(payload), CHUNK_BYTES):
                if cut and start >= len(payload) // 2:
                    raise RuntimeError("stand-in breaks the stream")  # uvicorn drops the connection
                self.chunks_sent += 1
                yield payload[start:start + CHUNK_BYTES]
                await asyncio.sleep(0.002)

        return StreamingResponse(stream(), media_type=self.speech_media)


class ServerThread:
    def __init__(self, standin: Standin) -> None:
        app = Starlette(routes=[Route("/v1/audio/transcriptions", standin.transcriptions, methods=["POST"]),
                                Route("/v1/audio/speech", standin.speech, methods=["POST"])])
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + scaled(10)
        while not self.server.started:
            assert time.monotonic() < deadline, "stand-in did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Standin, str]]:
    standin = Standin()
    with ServerThread(standin) as thread:
        yield standin, thread.base_url


@pytest.fixture
def standin(server: tuple[Standin, str], monkeypatch: pytest.MonkeyPatch) -> Standin:
    monkeypatch.setattr(openai_audio, "BACKOFF_S", 0.01)
    state, _ = server
    fresh = Standin()
    state.__dict__.update(fresh.__dict__)
    return state


@pytest.fixture
def base_url(server: tuple[Standin, str]) -> str:
    return server[1]


# -- ASR -----------------------------------------------------------------------------------------


def test_transcribe_posts_a_wav_as_multipart(standin: Standin, base_url: str) -> None:
    audio = tone(1.0, 16_000)
    asr = OpenAITranscriber(base_url, "whisper-large-v3", "sk-test")
    try:
        assert asr.transcribe(audio, "de") == "hello world"
    finally:
        asr.close()
    (seen,) = standin.requests
    assert seen["path"] == "/v1/audio/transcriptions"
    assert seen["request_type"].startswith("multipart/form-data")
    assert seen["fields"] == {"model": "whisper-large-v3", "language": "de", "response_format": "json"}
    assert seen["filename"].endswith(".wav") and seen["content_type"] == "audio/wav"
    assert seen["authorization"] == "Bearer sk-test"
    with wave.open(io.BytesIO(seen["file"]), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16_000, 1, 2)
        got = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert got.size == audio.size
    np.testing.assert_allclose(got / 32767.0, audio, atol=1e-4)
    assert asr.name == "whisper-large-v3"


def test_no_language_no_key_sends_neither(standin: Standin, base_url: str) -> None:
    asr = OpenAITranscriber(base_url)
    assert asr.transcribe(tone(0.5, 16_000)) == "hello world"
    (seen,) = standin.requests
    assert seen["fields"] == {"model": "whisper-1", "response_format": "json"}
    assert seen["authorization"] is None


def test_silence_and_tiny_clips_send_nothing(standin: Standin, base_url: str) -> None:
    asr = OpenAITranscriber(base_url)
    assert asr.transcribe(np.zeros(16_000, np.float32), "en") == ""
    assert asr.transcribe(tone(0.05, 16_000), "en") == ""
    assert standin.requests == []


def test_asr_retries_503_then_succeeds(standin: Standin, base_url: str) -> None:
    standin.fail = [503, 503]
    asr = OpenAITranscriber(base_url, retries=2)
    assert asr.transcribe(tone(0.5, 16_000), "en") == "hello world"
    assert len(standin.requests) == 3
    assert standin.requests[0]["file"] == standin.requests[2]["file"]  # the same WAV sent again


def test_asr_gives_up_after_its_retries_naming_the_server(standin: Standin, base_url: str) -> None:
    standin.fail = [503, 503, 503]
    asr = OpenAITranscriber(base_url, retries=1)
    with pytest.raises(EngineError) as caught:
        asr.transcribe(tone(0.5, 16_000), "en")
    assert caught.value.code == "asr_failed"
    assert f"{base_url}/audio/transcriptions" in str(caught.value)
    assert "HTTP 503" in str(caught.value) and "stand-in says 503" in str(caught.value)
    assert len(standin.requests) == 2


def test_asr_400_is_not_retried(standin: Standin, base_url: str) -> None:
    standin.fail = [400]
    asr = OpenAITranscriber(base_url, retries=2)
    with pytest.raises(EngineError) as caught:
        asr.transcribe(tone(0.5, 16_000), "en")
    assert caught.value.code == "asr_failed"
    assert "ASR server" in str(caught.value) and "HTTP 400: stand-in says 400" in str(caught.value)
    assert len(standin.requests) == 1


def test_asr_timeout_is_an_engine_timeout(standin: Standin, base_url: str) -> None:
    standin.delay_s = 1.0
    asr = OpenAITranscriber(base_url, timeout=0.2, retries=2)
    started = time.monotonic()
    with pytest.raises(EngineError) as caught:
        asr.transcribe(tone(0.5, 16_000), "en")
    assert time.monotonic() - started < scaled(0.9)  # one wait, not three
    assert caught.value.code == "engine_timeout"
    assert base_url in str(caught.value) and "0.2 s" in str(caught.value)
    assert len(standin.requests) == 1


def test_asr_unreachable_server(standin: Standin) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens
    asr = OpenAITranscriber(url, retries=1)
    with pytest.raises(EngineError) as caught:
        asr.transcribe(tone(0.5, 16_000), "en")
    assert caught.value.code == "asr_failed"
    assert "unreachable" in str(caught.value) and url in str(caught.value)


def test_asr_answer_shapes(base_url: str) -> None:
    # a server that ignores response_format=json and answers plain text is taken at its word
    assert asr_openai._transcript(b"hello world\n", base_url) == "hello world"
    with pytest.raises(EngineError, match="without a transcript"):
        asr_openai._transcript(json.dumps({"segments": []}).encode(), base_url)


def test_asr_from_many_threads_at_once(standin: Standin, base_url: str) -> None:
    asr = OpenAITranscriber(base_url)
    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(lambda _: asr.transcribe(tone(0.3, 16_000), "en"), range(12)))
    assert texts == ["hello world"] * 12
    assert len(standin.requests) == 12


# -- TTS -----------------------------------------------------------------------------------------


def test_synthesize_streams_pcm(standin: Standin, base_url: str) -> None:
    tts = OpenAISynthesizer(base_url, "tts-1-hd", "nova", "sk-tts", speed=1.25)
    try:
        samples = tts.synthesize("Hello there.")
    finally:
        tts.close()
    assert tts.sample_rate == 24_000
    (seen,) = standin.requests
    assert seen["path"] == "/v1/audio/speech"
    assert seen["json"] == {"model": "tts-1-hd", "input": "Hello there.", "voice": "nova",
                            "response_format": "pcm", "speed": 1.25}
    assert seen["authorization"] == "Bearer sk-tts"
    assert standin.chunks_sent > 10  # it really came in pieces, samples split across them
    assert samples.dtype == np.int16
    np.testing.assert_array_equal(samples, np.frombuffer(standin.pcm, dtype="<i2"))


def test_odd_byte_count_drops_the_last_byte(standin: Standin, base_url: str) -> None:
    standin.pcm = standin.pcm + b"\x7f"
    samples = OpenAISynthesizer(base_url).synthesize("Hi.")
    assert samples.size == (len(standin.pcm) - 1) // 2
    np.testing.assert_array_equal(samples, np.frombuffer(standin.pcm[:-1], dtype="<i2"))


def test_empty_text_sends_nothing(standin: Standin, base_url: str) -> None:
    assert OpenAISynthesizer(base_url).synthesize("  ").size == 0
    assert standin.requests == []


def test_tts_retries_503(standin: Standin, base_url: str) -> None:
    standin.fail = [503]
    samples = OpenAISynthesizer(base_url, retries=2).synthesize("Hi.")
    assert samples.size == len(standin.pcm) // 2
    assert len(standin.requests) == 2


def test_tts_stream_cut_short_is_retried_whole(standin: Standin, base_url: str) -> None:
    standin.cut_next_body = True
    samples = OpenAISynthesizer(base_url, retries=1).synthesize("Hi.")
    assert len(standin.requests) == 2
    np.testing.assert_array_equal(samples, np.frombuffer(standin.pcm, dtype="<i2"))  # not the half twice


def test_tts_400_names_the_server(standin: Standin, base_url: str) -> None:
    standin.fail = [400]
    with pytest.raises(EngineError) as caught:
        OpenAISynthesizer(base_url, retries=2).synthesize("Hi.")
    assert caught.value.code == "tts_failed"
    assert f"TTS server at {base_url}/audio/speech answered HTTP 400: stand-in says 400" in str(caught.value)
    assert len(standin.requests) == 1


def test_tts_timeout(standin: Standin, base_url: str) -> None:
    standin.delay_s = 1.0
    with pytest.raises(EngineError) as caught:
        OpenAISynthesizer(base_url, timeout=0.2).synthesize("Hi.")
    assert caught.value.code == "engine_timeout"
    assert base_url in str(caught.value)


def test_tts_accepts_a_24k_wav_and_refuses_others(standin: Standin, base_url: str) -> None:
    samples = (tone(0.2, PCM_RATE) * 32767).astype(np.int16)
    standin.speech_body = wav(samples, PCM_RATE)
    standin.speech_media = "audio/wav"
    np.testing.assert_array_equal(OpenAISynthesizer(base_url).synthesize("Hi."), samples)
    standin.speech_body = wav(samples, 22_050)
    with pytest.raises(EngineError, match="instead of response_format pcm"):
        OpenAISynthesizer(base_url).synthesize("Hi.")


# -- loading: all remote = no model runtime in the process -------------------------------------------

_ALL_REMOTE = r"""
import sys
import numpy as np
from voicebot.config import from_env
from voicebot.engines.loader import load_engines
url = "http://127.0.0.1:9/v1"  # nothing answers: loading must not call them
engines = load_engines(from_env({}, asr_base_url=url, tts_base_url=url, llm_base_url=url))
heavy = sorted(m for m in ("faster_whisper", "ctranslate2", "tokenizers", "piper", "xllamacpp", "llama_cpp")
               if m in sys.modules)
kinds = [type(e).__name__ for e in (engines.asr, engines.tts, engines.llm)]
x = np.random.default_rng(1).standard_normal(8 * 16000).astype(np.float32)
ours = engines.turn._features(x, padding=0)
from faster_whisper.feature_extractor import FeatureExtractor
theirs = FeatureExtractor(feature_size=80, chunk_length=8)(x, padding=0)
p = engines.turn.complete_probability(x)
print(__import__("json").dumps({"heavy": heavy, "kinds": kinds, "slots": [engines.cpu.asr.slots, engines.cpu.tts.slots],
                               "same_features": bool(np.array_equal(ours, theirs)), "p": p}))
"""


def test_all_remote_loads_no_model_runtime() -> None:
    done = subprocess.run([sys.executable, "-c", _ALL_REMOTE], capture_output=True, text=True,
                          timeout=scaled(120), check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["heavy"] == []
    assert found["kinds"] == ["OpenAITranscriber", "OpenAISynthesizer", "OpenAIChatModel"]
    assert min(found["slots"]) >= 16  # network waits, not CPU: more calls at once than cores
    assert found["same_features"]  # the turn model's front end is faster-whisper's own code
    assert 0.0 <= found["p"] <= 1.0
