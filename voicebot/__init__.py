"""voicebot: a realtime voice-to-voice assistant server speaking the OpenAI Realtime API."""

__version__ = "0.1.0"
