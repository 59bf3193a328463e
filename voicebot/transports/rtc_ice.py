"""ICE for WebRTC calls: which servers (settings, never aiortc's public default) and which host candidates.

Two aiortc/aioice defaults do not fit a self-hosted server:

* ``RTCPeerConnection()`` without a configuration asks a public Google STUN server. We always pass
  ``RTCConfiguration(iceServers=...)`` built from ``--ice-servers`` (empty by default).
* aioice gathers host candidates from every interface *except loopback* (``get_host_addresses``),
  so a server bound to 127.0.0.1 would offer no candidate a local client can reach, and one bound
  to a specific address would offer all the others too. aioice has no option for this, so
  :func:`host_addresses` scopes a replacement of that one function with a ``ContextVar``: inside
  the ``with`` block (around ``setLocalDescription``, where gathering happens) candidates come from
  the bound address; everywhere else aioice behaves exactly as shipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_SCHEMES = ("stun", "stuns", "turn", "turns")
_ANY_HOSTS = ("", "0.0.0.0", "::")
_LOOPBACK_HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1"}

_override: ContextVar[tuple[str, ...] | None] = ContextVar("voicebot_ice_host_addresses", default=None)
_aioice_get_host_addresses = aioice.ice.get_host_addresses


class IceConfigError(ValueError):
    """An ``--ice-servers`` entry that is not a STUN/TURN URL."""


def parse_ice_server(spec: str) -> RTCIceServer:
    """``stun:host:port`` / ``turn:user:password@host:port[?transport=tcp]`` -> RTCIceServer."""
    scheme, sep, rest = spec.strip().partition(":")
    if not sep or scheme not in _SCHEMES or not rest:
        raise IceConfigError(
            f"ICE server {spec!r} must look like 'stun:host:port' or 'turn:user:password@host:port'")
    if "@" not in rest:
        if scheme.startswith("turn"):
            raise IceConfigError(f"TURN server {spec!r} needs credentials: 'turn:user:password@host:port'")
        return RTCIceServer(urls=f"{scheme}:{rest}")
    credentials, _, target = rest.rpartition("@")
    username, colon, credential = credentials.partition(":")
    if not colon or not username or not target:
        raise IceConfigError(f"ICE server {spec!r}: credentials must be 'user:password@host:port'")
    return RTCIceServer(urls=f"{scheme}:{target}", username=username, credential=credential)


def rtc_configuration(specs: Sequence[str]) -> RTCConfiguration:
    """Always an explicit list: an empty one means host candidates only, no public STUN."""
    return RTCConfiguration(iceServers=[parse_ice_server(s) for s in specs])


def candidate_addresses(bind_host: str) -> tuple[str, ...]:
    """The addresses to offer host candidates on for a server bound to ``bind_host``."""
    if bind_host in _LOOPBACK_HOSTS:
        return (_LOOPBACK_HOSTS[bind_host],)
    if bind_host in _ANY_HOSTS:
        # Every interface, and loopback too so that local clients (and hosts with no network) work.
        found = _aioice_get_host_addresses(use_ipv4=True, use_ipv6=bind_host == "::")
        return (*found, "127.0.0.1")
    return (bind_host,)


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _override.get()
    if chosen is None:
        return _aioice_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]


@contextlib.contextmanager
def host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """Within this block (and tasks started in it), aioice gathers host candidates on ``addresses``."""
    aioice.ice.get_host_addresses = _get_host_addresses  # idempotent; a no-op outside the block
    token = _override.set(tuple(addresses))
    try:
        yield
    finally:
        _override.reset(token)
