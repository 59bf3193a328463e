"""Shared fixtures: free loopback ports, a real server process, timeouts scaled for slow machines."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Multiply every e2e timeout by this on slow or busy machines.
TIMEOUT_FACTOR = float(os.environ.get("VOICEBOT_TEST_TIMEOUT_FACTOR", "1"))
API_KEY = "test-key-123"
ARTIFACTS = ROOT / "test-artifacts"


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    tls: bool = False

    @property
    def http(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(*args: str, env: dict[str, str] | None = None, ready_timeout: float = 180,
                 verify: ssl.SSLContext | None = None) -> ServerProcess:
    """Start ``voicebot serve`` on a free loopback port and wait for /healthz (over TLS, trusting
    ``verify``, when it is given)."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"server-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "voicebot", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})},
    )
    server = ServerProcess(process, port, log_path, tls=verify is not None)
    deadline = time.monotonic() + scaled(ready_timeout)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.http}/healthz", timeout=1, verify=verify or True).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server not ready after {ready_timeout}s:\n{server.log()[-4000:]}")


def stop_server(server: ServerProcess) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def real_server() -> Iterator[ServerProcess]:
    """One server with the embedded models for the whole test run (loading takes seconds)."""
    server = start_server("--api-key", API_KEY)
    yield server
    stop_server(server)
    assert server.process.returncode is not None
