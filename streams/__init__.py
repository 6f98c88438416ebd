"""Audit-stream consumers: the tamper-evident ledger, alerts and exports."""
