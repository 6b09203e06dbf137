"""Prometheus metrics of the evaluator, on a loopback port (off unless configured).

Owns the metric definitions and their updates from the evaluator's counters. Counters the
hot path already keeps (events by type, alerts by rule) are copied into the registry once a
second instead of being incremented per event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

SEVERITY_LABELS = ("info", "low", "medium", "high", "critical")


class Metrics:
    def __init__(self, port: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Gauge("roguewatch_events_total", "events evaluated, by type", ["type"],
                            registry=r)  # fmt: skip
        self.alerts = Gauge("roguewatch_alerts_total", "alerts, by rule and severity",
                            ["rule", "severity"], registry=r)  # fmt: skip
        self.actions = Gauge("roguewatch_actions_total", "actions carried out, by action",
                             ["action"], registry=r)  # fmt: skip
        self.lost = Gauge("roguewatch_events_lost_total", "events lost, by stage",
                          ["stage"], registry=r)  # fmt: skip
        self.reloads = Counter("roguewatch_rule_reloads_total", "rule reloads, by result",
                               ["result"], registry=r)  # fmt: skip
        self.latency = Histogram(
            "roguewatch_evaluation_latency_seconds", "event time to alert, per alert",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0), registry=r,
        )  # fmt: skip
        self.sessions = Gauge("roguewatch_sessions", "sessions known to the evaluator",
                              registry=r)  # fmt: skip
        self.server = start_http_server(port, addr="127.0.0.1", registry=r)

    def sync(self, by_type: dict[str, int], by_rule: dict[tuple[str, str], int],
             lost: dict[str, int], sessions: int, actions: dict[str, int]) -> None:  # fmt: skip
        for a, n in actions.items():
            self.actions.labels(a).set(n)
        for t, n in by_type.items():
            self.events.labels(t).set(n)
        for (rule, sev), n in by_rule.items():
            self.alerts.labels(rule, sev).set(n)
        for stage, n in lost.items():
            self.lost.labels(stage).set(n)
        self.sessions.set(sessions)
