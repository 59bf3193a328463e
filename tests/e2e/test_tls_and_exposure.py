"""Serving strangers: TLS straight from ``voicebot serve``, and no open server by accident.

The TLS tests start the real server with a self-signed certificate made here (``cryptography``)
and talk to it the way clients do: the official ``openai`` SDK over https, a ``websockets``
client over wss, and the npm ``openai`` package's ``OpenAIRealtimeWS`` (which only speaks wss)
holding a spoken turn under node, all trusting only that certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openai import AsyncOpenAI

from tests.conftest import API_KEY, ROOT, ServerProcess, scaled, start_server, stop_server
from tests.realtime_client import silence24k, to_pcm24k
from tests.speech import utterance, wer

pytestmark = pytest.mark.e2e


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class TlsServer:
    server: ServerProcess
    cert: Path
    trust: ssl.SSLContext


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    trust = ssl.create_default_context(cafile=str(cert))
    server = start_server("--api-key", API_KEY, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), verify=trust)
    yield TlsServer(server, cert, trust)
    stop_server(server)


async def test_https_and_wss_with_the_servers_own_certificate(tls_server: TlsServer) -> None:
    server, trust = tls_server.server, tls_server.trust
    assert server.http.startswith("https://")
    with pytest.raises(httpx.ConnectError):  # a client that does not trust it is refused
        httpx.get(f"{server.http}/healthz")
    async with httpx.AsyncClient(verify=trust) as http:
        client = AsyncOpenAI(base_url=f"{server.http}/v1", api_key=API_KEY, http_client=http)
        reply = await client.chat.completions.create(
            model="voicebot", max_tokens=8, messages=[{"role": "user", "content": "Say hello."}])
        assert reply.choices[0].message.content
    async with websockets.connect(f"{server.ws}/v1/realtime?model=voicebot", ssl=trust,
                                  additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    assert "ready on https://" in server.log()


JS_DIR = ROOT / "tests" / "js"


def node_major() -> int:
    if shutil.which("node") is None:
        return 0
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30).stdout
    return int(version.strip().lstrip("v").split(".")[0] or 0)


@pytest.mark.skipif(node_major() < 20 or not (JS_DIR / "node_modules" / "openai").is_dir(),
                    reason="needs node >= 20 (the openai package's floor) and `npm ci` in tests/js (.ci/run does it)")
def test_npm_openai_realtime_client_holds_a_spoken_turn_over_wss(tls_server: TlsServer, tmp_path: Path) -> None:
    speech = utterance("goforward")
    pcm = tmp_path / "turn.pcm"
    pcm.write_bytes(silence24k(300) + to_pcm24k(speech.samples()) + silence24k(2000))
    run = subprocess.run(
        ["node", "realtime_wss.mjs", f"{tls_server.server.http}/v1", API_KEY, str(pcm)], cwd=JS_DIR,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(tls_server.cert)},
        capture_output=True, text=True, timeout=scaled(150))
    events: list[dict[str, Any]] = [json.loads(line) for line in run.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert run.returncode == 0, (run.stderr[-2000:], kinds)
    assert "sdk_error" not in kinds and "error" not in kinds, events
    assert kinds[0] == "session.created"
    heard = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert wer(speech.text, heard["transcript"]) <= 0.25, heard["transcript"]
    spoken = sum(e["bytes"] for e in events if e["type"] == "response.output_audio.delta")
    assert spoken > 24_000 * 2 // 2, "at least half a second of reply audio came back over wss"
    done = next(e for e in events if e["type"] == "response.done")
    assert done["response"]["status"] == "completed"
    assert events[-1] == {"type": "closed", "code": 1000}, "the client closed the socket cleanly"


@pytest.mark.parametrize(("args", "says"), [
    (["--host", "0.0.0.0"], "--insecure"),
    (["--host", "::"], "--insecure"),
    (["--ssl-certfile", "/nonexistent.pem"], "--ssl-keyfile"),
])
def test_an_unsafe_or_impossible_start_is_refused_at_once(args: list[str], says: str) -> None:
    result = subprocess.run([sys.executable, "-m", "voicebot", "serve", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr
