"""Prometheus metrics of one broker process (a registry per app, so tests stay independent)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["Metrics"]


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

        self.integrity = Counter(
            "telerad_integrity_violations",
            "Reads through links that failed the integrity check (finding: altered, "
            "unfingerprinted, transcoded, index_full; action: cut_off, refused, served).",
            ["finding", "action"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
