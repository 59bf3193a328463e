"""``POST /telephony/twilio/voice``: the TwiML webhook a Twilio number points at.

It answers ``<Response><Connect><Stream url="wss://…/telephony/twilio/media">`` so Twilio opens a
bidirectional media stream to us, and passes the call's details (and the webhook's own query
parameters, e.g. ``?conversation=ID``) through as ``<Parameter>``s: Twilio forbids query strings
in the stream URL, and those parameters arrive in the stream's ``start`` message.

With ``--twilio-auth-token`` set, ``X-Twilio-Signature`` is checked (HMAC-SHA1 over the URL
Twilio requested plus the sorted POST parameters, base64) and anything unsigned gets 403. The
URL must be the public one Twilio saw, so behind a proxy set ``--public-url``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from xml.etree import ElementTree

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from voicebot.config import Settings
from voicebot.errors import HttpError
from voicebot.transports.access import app_state

log = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 64 * 1024  # Twilio's parameters are a few hundred bytes
#: Call details passed to the media stream as <Parameter>s (besides the webhook's query string).
PASSED_PARAMS = ("CallSid", "AccountSid", "From", "To", "Direction", "CallerName")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def twilio_signature(token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """base64(HMAC-SHA1(token, url + every key+value, sorted by key then value))."""
    payload = url + "".join(k + v for k, v in sorted(params))
    digest = hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as given, and with the default port added or removed (Twilio signs either)."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    if parts.port is None and default is not None:
        other = parts._replace(netloc=f"{prefix}{host}:{default}")
    elif parts.port == default:
        other = parts._replace(netloc=f"{prefix}{host}")
    else:
        return [url]
    return [url, urlunsplit(other)]


def verify_twilio(token: str, url: str, params: Iterable[tuple[str, str]], signature: str | None) -> bool:
    if not signature:
        return False
    pairs = list(params)
    return any(hmac.compare_digest(twilio_signature(token, candidate, pairs), signature)
               for candidate in _port_variants(url))


def public_url(settings: Settings, url: URL, *, websocket: bool = False) -> str:
    """The URL as the carrier sees it: ``--public-url`` replaces scheme and host when set."""
    if not settings.public_url:
        return str(url)
    base = urlsplit(settings.public_url.rstrip("/"))
    scheme = base.scheme
    if websocket:
        scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    return urlunsplit((scheme, base.netloc, base.path + url.path, url.query, ""))


def media_stream_url(settings: Settings, request_url: URL, carrier: str) -> str:
    path = f"/telephony/{carrier}/media"
    if settings.public_url:
        base = urlsplit(settings.public_url.rstrip("/"))
        scheme = {"https": "wss", "http": "ws"}.get(base.scheme, base.scheme)
        return urlunsplit((scheme, base.netloc, base.path + path, "", ""))
    scheme = "wss" if request_url.scheme in ("https", "wss") else "ws"
    return urlunsplit((scheme, request_url.netloc, path, "", ""))


def connect_stream_twiml(stream_url: str, parameters: dict[str, str]) -> str:
    response = ElementTree.Element("Response")
    stream = ElementTree.SubElement(ElementTree.SubElement(response, "Connect"), "Stream", url=stream_url)
    for name, value in parameters.items():
        ElementTree.SubElement(stream, "Parameter", name=name, value=value)
    return '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(response, encoding="unicode")


async def twilio_voice(request: Request) -> Response:
    try:
        settings = app_state(request).settings
    except HttpError as err:
        return PlainTextResponse(err.message, status_code=err.status)
    body = await request.body()
    if len(body) > MAX_WEBHOOK_BYTES:
        return PlainTextResponse("Request body too large.", status_code=413)
    params = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    if settings.twilio_auth_token:
        url = public_url(settings, request.url)
        if not verify_twilio(settings.twilio_auth_token, url, params, request.headers.get("x-twilio-signature")):
            log.warning("refused a TwiML webhook request with a bad X-Twilio-Signature (url %s)", url)
            return PlainTextResponse("Invalid X-Twilio-Signature.", status_code=403)
    form = dict(params)
    passed = {k: v for k, v in request.query_params.items()}
    passed.update({k: form[k] for k in PASSED_PARAMS if form.get(k)})
    xml = connect_stream_twiml(media_stream_url(settings, request.url, "twilio"), passed)
    log.info("call %s from %s: connecting a media stream", form.get("CallSid", "?"), form.get("From", "?"))
    return Response(xml, media_type="application/xml")
