"""Carrier media-stream serializers, chosen by the path ``/telephony/{carrier}/media``."""

from __future__ import annotations

from collections.abc import Callable

from voicebot.transports.carriers.base import Serializer
from voicebot.transports.carriers.telnyx import TelnyxSerializer
from voicebot.transports.carriers.twilio import TwilioSerializer
from voicebot.transports.carriers.vonage import VonageSerializer

CARRIERS: dict[str, Callable[[], Serializer]] = {
    "twilio": TwilioSerializer,
    "telnyx": TelnyxSerializer,
    "vonage": VonageSerializer,
}
