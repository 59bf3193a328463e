"""The TwiML answer and X-Twilio-Signature, checked against Twilio's own library."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest
from starlette.datastructures import URL
from twilio.request_validator import RequestValidator

from voicebot.config import from_env
from voicebot.transports.twiml import (
    connect_stream_twiml,
    media_stream_url,
    public_url,
    twilio_signature,
    verify_twilio,
)

TOKEN = "12345"
URL_ = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234", "From": "+12349013030",
          "To": "+18005551212"}


def test_signature_matches_twilios_request_validator() -> None:
    official = RequestValidator(TOKEN).compute_signature(URL_, PARAMS)
    assert twilio_signature(TOKEN, URL_, PARAMS.items()) == official
    assert verify_twilio(TOKEN, URL_, PARAMS.items(), official)
    # Twilio's validator accepts the URL with or without the default port; so do we.
    assert verify_twilio(TOKEN, "https://mycompany.com:443/myapp.php?foo=1&bar=2", PARAMS.items(), official)


@pytest.mark.parametrize("signature", [None, "", "AAAA", "not the signature"])
def test_forged_or_missing_signatures_fail(signature: str | None) -> None:
    assert not verify_twilio(TOKEN, URL_, PARAMS.items(), signature)


def test_tampered_params_fail() -> None:
    official = RequestValidator(TOKEN).compute_signature(URL_, PARAMS)
    assert not verify_twilio(TOKEN, URL_, {**PARAMS, "From": "+10000000000"}.items(), official)
    assert not verify_twilio("other-token", URL_, PARAMS.items(), official)


def test_twiml_connects_a_stream_with_escaped_parameters() -> None:
    xml = connect_stream_twiml("wss://voice.example.com/telephony/twilio/media",
                               {"From": "+1555", "note": 'a "quoted" <value> & more'})
    root = ElementTree.fromstring(xml)
    stream = root.find("./Connect/Stream")
    assert root.tag == "Response" and stream is not None
    assert stream.get("url") == "wss://voice.example.com/telephony/twilio/media"
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == {
        "From": "+1555", "note": 'a "quoted" <value> & more'}


def test_public_url_rewrites_scheme_and_host() -> None:
    settings = from_env({}, public_url="https://voice.example.com/")
    request = URL("http://127.0.0.1:8000/telephony/twilio/voice?conversation=c1")
    assert public_url(settings, request) == "https://voice.example.com/telephony/twilio/voice?conversation=c1"
    ws = URL("ws://127.0.0.1:8000/telephony/twilio/media")
    assert public_url(settings, ws, websocket=True) == "wss://voice.example.com/telephony/twilio/media"
    assert media_stream_url(settings, request, "twilio") == "wss://voice.example.com/telephony/twilio/media"
    plain = from_env({})
    assert media_stream_url(plain, request, "twilio") == "ws://127.0.0.1:8000/telephony/twilio/media"
    assert public_url(plain, request) == str(request)
