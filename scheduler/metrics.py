"""Prometheus metrics, served on 127.0.0.1 when ``[daemon] metrics_port`` is set.

Each daemon has its own registry (tests can build several). Names:

* ``remind_contacts_settled_total{channel,outcome}``: contacts settled by this process;
* ``remind_sla_breaches_total``: first-24h contacts sent late or still unsent at the deadline;
* ``remind_tick_seconds{tick}``: how long each tick took (histogram);
* ``remind_tick_last_success_timestamp_seconds{tick}``;
* ``remind_queue_contacts{channel,status}``: the contacts table by status (refreshed by watch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from scheduler.queue import Settlement

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.settled = Counter(
            "remind_contacts_settled", "Contacts settled by this process",
            ["channel", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.sla_breaches = Counter(
            "remind_sla_breaches", "First-24h contacts late or unsent at the deadline",
            registry=self.registry,
        )  # fmt: skip
        self.tick_seconds = Histogram(
            "remind_tick_seconds", "Tick duration", ["tick"], registry=self.registry
        )
        self.tick_last = Gauge(
            "remind_tick_last_success_timestamp_seconds", "Last successful tick",
            ["tick"], registry=self.registry,
        )  # fmt: skip
        self.queue = Gauge(
            "remind_queue_contacts", "Contacts by channel and status",
            ["channel", "status"], registry=self.registry,
        )  # fmt: skip

    def serve(self, port: int) -> None:
        """Expose the registry on http://127.0.0.1:PORT/metrics (a daemon thread)."""
        start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def count(self, settled: Sequence[Settlement]) -> None:
        for s in settled:
            self.settled.labels(s.channel, s.event).inc()
            if s.sla_breach:
                self.sla_breaches.inc()

    def set_depth(self, depth: Mapping[tuple[str, str], int]) -> None:
        for (channel, status), n in depth.items():
            self.queue.labels(channel, status).set(n)
