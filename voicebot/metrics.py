"""What a running server can be watched by: Prometheus metrics (``prometheus-client``), at ``/metrics``.

Why this library: it is the reference client, kept by the Prometheus project, and writes the text
exposition format scrapers expect. Each app has its own registry (several apps in one process —
tests, benchmarks — must not share or collide). Counts that are a state of the server (sessions
open, work queued) are read when scraped, from the registries that own them, so they cannot drift;
what happens (turns, barge-ins, errors, stage times) is recorded where it happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Stages of a voice turn, each measured from the end of the person's speech.
STAGES = ("endpointing", "asr", "llm_first_token", "tts_first_audio", "voice_to_voice")
# Seconds: turn-taking lives between 50 ms and a few seconds.
_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)


class _Live(Collector):
    """Gauges read at scrape time from the functions given."""

    def __init__(self, sessions: Callable[[], Mapping[str, int]], queues: Callable[[], Mapping[str, int]]) -> None:
        self._sessions = sessions
        self._queues = queues

    def collect(self) -> Iterable[Metric]:
        active = GaugeMetricFamily("voicebot_active_sessions", "Open sessions by transport.", labels=["transport"])
        for transport, count in self._sessions().items():
            active.add_metric([transport], count)
        yield active
        depth = GaugeMetricFamily("voicebot_engine_queue_depth",
                                  "Engine calls waiting for a CPU (asr, tts) or generation (llm) slot.",
                                  labels=["queue"])
        for queue, waiting in self._queues().items():
            depth.add_metric([queue], waiting)
        yield depth


class Metrics:
    """The server's metrics; every method is cheap enough to call on the event loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_seconds = Histogram("voicebot_stage_seconds", "Time from the end of the person's speech "
                                       "to each stage of the reply.", ["stage"], buckets=_BUCKETS, registry=r)
        self.barge_in_seconds = Histogram("voicebot_barge_in_seconds", "From the onset of an interruption to "
                                          "the reply being cut.", buckets=_BUCKETS, registry=r)
        self.turns = Counter("voicebot_turns", "Replies completed.", registry=r)
        self.barge_ins = Counter("voicebot_barge_ins", "Replies cut by the person talking over them.", registry=r)
        self.errors = Counter("voicebot_errors", "Error events sent, by code.", ["kind"], registry=r)
        self.dropped_audio_frames = Counter("voicebot_dropped_audio_frames", "Audio frames dropped: undecodable "
                                            "input, or output a slow peer could not take.", registry=r)

    def watch(self, sessions: Callable[[], Mapping[str, int]], queues: Callable[[], Mapping[str, int]]) -> None:
        """Report these live counts at every scrape (the app's session registry and engine queues)."""
        self.registry.register(_Live(sessions, queues))

    def stage(self, name: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=name).observe(max(0.0, seconds))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
