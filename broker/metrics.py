"""Prometheus metrics of one broker process (a registry per app, so tests stay independent)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from broker.ops_server import OpsServer

if TYPE_CHECKING:
    from broker.config import Settings

__all__ = ["Metrics", "metrics_server"]


class Metrics:
    """The counters and histograms the broker keeps; ``render()`` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "telerad_decisions",
            "Policy decisions by action and outcome.",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.policy_errors = Counter(
            "telerad_policy_errors",
            "Decisions the broker denied itself because OPA gave no usable answer, by code.",
            ["code"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "telerad_decision_seconds",
            "Time to ask OPA for a decision.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.audit_failures = Counter(
            "telerad_audit_failures",
            "Audit events that could not be made durable (the request was refused).",
            registry=self.registry,
        )
        self.token_rejections = Counter(
            "telerad_token_rejections",
            "Bearer tokens refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.redemptions = Counter(
            "telerad_link_redemptions",
            "Link redemptions by outcome (allow or the refusal reason).",
            ["outcome"],
            registry=self.registry,
        )

        self.rate_limited = Counter(
            "telerad_rate_limited",
            "Requests refused with 429 by a rate limit, by scope (issue_link, redeem, login).",
            ["scope"],
            registry=self.registry,
        )

        self.integrity = Counter(
            "telerad_integrity_violations",
            "Reads through links that failed the integrity check (finding: altered, "
            "unfingerprinted, transcoded, index_full; action: cut_off, refused, served).",
            ["finding", "action"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def metrics_server(settings: Settings, metrics: Metrics) -> OpsServer | None:
    """``/metrics`` on ``settings.metrics_port`` (started), or None when metrics are off.

    The broker's own port never serves it: an Ingress or a tunnel that exposes ``/`` cannot
    expose the metrics, and the NetworkPolicy can let only the scraper reach this port.
    """
    if settings.metrics_port is None:
        return None

    def render() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, metrics.render()

    server = OpsServer(settings.host, settings.metrics_port, {"/metrics": render}, name="metrics")
    return server.start()
