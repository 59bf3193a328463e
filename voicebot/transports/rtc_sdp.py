"""Check a WebRTC SDP offer before any peer connection is created for it.

aiortc's parser asserts rather than reports, and ``setRemoteDescription`` fails late, after ports
and tasks exist. Validating first means a bad offer costs nothing but a 400 with a message that
says what is wrong (no audio section, no codec we speak, missing ICE or DTLS parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.sdp import SessionDescription

from voicebot.errors import VoicebotError

MAX_SDP_BYTES = 64 * 1024
#: Audio codecs aiortc encodes and decodes; Opus is preferred in the answer.
SUPPORTED_AUDIO = ("opus", "G722", "PCMU", "PCMA")
DATA_CHANNEL_LABEL = "oai-events"


class OfferError(VoicebotError, ValueError):
    """An SDP offer we cannot answer; the message is meant for the client."""


@dataclass(frozen=True, slots=True)
class Offer:
    sdp: str
    ice_ufrag: str
    codecs: tuple[str, ...]  # supported audio codecs in the offer, in the peer's order
    has_data_channel: bool

    @property
    def key(self) -> str:
        """Identifies this offer: a peer makes new ICE credentials for every offer it creates."""
        return self.ice_ufrag


def parse_offer(body: bytes) -> Offer:
    """Validate an SDP offer body; raise :class:`OfferError` naming the problem."""
    if not body.strip():
        raise OfferError("The request body is empty: send the SDP offer as the body (Content-Type: application/sdp).")
    if len(body) > MAX_SDP_BYTES:
        raise OfferError(f"The SDP offer is {len(body)} bytes; the limit is {MAX_SDP_BYTES}.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise OfferError("The body is not SDP: it is not UTF-8 text.") from None
    text = text.replace("\r\n", "\n").strip()
    if not text.startswith("v=0"):
        raise OfferError("The body is not SDP: an SDP offer starts with 'v=0'.")
    try:
        desc = SessionDescription.parse(text.replace("\n", "\r\n") + "\r\n")
    except Exception as exc:  # aiortc's parser asserts and indexes: any failure means malformed
        detail = f": {exc}" if str(exc) else ""
        raise OfferError(f"The SDP offer is malformed ({type(exc).__name__}{detail}).") from None
    audio = [m for m in desc.media if m.kind == "audio" and m.port != 0]
    if not audio:
        raise OfferError("The SDP offer has no audio section (m=audio): a call needs a microphone track.")
    section = audio[0]
    offered = [c.mimeType.split("/", 1)[1] for c in section.rtp.codecs]
    supported = tuple(dict.fromkeys(c for c in offered if c.lower() in {s.lower() for s in SUPPORTED_AUDIO}))
    if not supported:
        names = ", ".join(dict.fromkeys(offered)) or "none"
        raise OfferError(f"The SDP offer has no supported audio codec (offered: {names}; "
                         f"supported: {', '.join(SUPPORTED_AUDIO)}).")
    if section.ice is None or not section.ice.usernameFragment or not section.ice.password:
        raise OfferError("The SDP offer has no ICE credentials (a=ice-ufrag / a=ice-pwd).")
    if section.dtls is None or not section.dtls.fingerprints:
        raise OfferError("The SDP offer has no DTLS parameters (a=fingerprint and a=setup).")
    has_data = any(m.kind == "application" and m.port != 0 and "SCTP" in m.profile for m in desc.media)
    return Offer(text.replace("\n", "\r\n") + "\r\n", section.ice.usernameFragment, supported, has_data)
