"""Prometheus metrics, served on 127.0.0.1 when ``[daemon] metrics_port`` is set.

Each daemon has its own registry (tests can build several). Names:

* ``remind_contacts_settled_total{channel,outcome}``: contacts settled by this daemon, its
  dispatch children's included (``[daemon] dispatch_processes``; each child reports a
  ``Tally`` per recorded batch to the daemon, see ``scheduler.workers``);
* ``remind_sla_breaches_total``: first-24h contacts sent late (by the daemon or a child) or
  still unsent at the deadline;
* ``remind_tick_seconds{tick}``: how long each of the daemon's own ticks took (histogram);
* ``remind_tick_last_success_timestamp_seconds{tick}``;
* ``remind_queue_contacts{channel,status}``: the contacts table by status (refreshed by watch).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from scheduler.queue import Settlement

__all__ = ["Metrics", "Tally", "tally"]


@dataclass(frozen=True, slots=True)
class Tally:
    """``contacts`` settled on ``channel`` with ``outcome`` (the audit event's kind), of
    which ``sla_breaches`` were first-24h contacts sent late."""

    channel: str
    outcome: str
    contacts: int
    sla_breaches: int = 0


def tally(settled: Sequence[Settlement]) -> list[Tally]:
    """``settled`` counted by channel and outcome."""
    contacts = collections.Counter((s.channel, s.event) for s in settled)
    breaches = collections.Counter((s.channel, s.event) for s in settled if s.sla_breach)
    return [Tally(c, o, n, breaches[c, o]) for (c, o), n in contacts.items()]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.settled = Counter(
            "remind_contacts_settled",
            "Contacts settled by this daemon and its dispatch children",
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
        """Count a batch this process recorded."""
        for t in tally(settled):
            self.add(t)

    def add(self, t: Tally) -> None:
        """Count ``t`` (a batch's share, from this process or a dispatch child)."""
        self.settled.labels(t.channel, t.outcome).inc(t.contacts)
        if t.sla_breaches:
            self.sla_breaches.inc(t.sla_breaches)

    def set_depth(self, depth: Mapping[tuple[str, str], int]) -> None:
        for (channel, status), n in depth.items():
            self.queue.labels(channel, status).set(n)
