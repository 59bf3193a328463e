"""Serving strangers: TLS straight from ``voicebot serve``, and no open server by accident.

The TLS test starts the real server with a self-signed certificate made here (``cryptography``)
and talks to it the way clients do: the official ``openai`` SDK over https and a ``websockets``
client over wss, both trusting only that certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openai import AsyncOpenAI

from tests.conftest import API_KEY, ROOT, start_server, stop_server

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


async def test_https_and_wss_with_the_servers_own_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    server = start_server("--api-key", API_KEY, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), verify=trust)
    try:
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
    finally:
        stop_server(server)


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
