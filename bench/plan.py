"""How much each phase does: the quick smoke run and the full run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["FULL", "QUICK", "Plan"]


@dataclass(frozen=True)
class Plan:
    """Request counts, caps and sizes of one run (every phase is bounded in count and time)."""

    mode: str
    levels: tuple[int, ...]  # concurrent clients per HTTP level
    opa_count: int  # measured requests per OPA level
    broker_count: int  # measured requests per broker level
    warmup: int  # requests before each level (not measured)
    time_cap: float  # seconds; a level stops sending new requests after this
    workers: tuple[int, ...]  # broker configurations (uvicorn workers)
    study_instances: int  # slices of the bench-only 512x512 CT study
    redeem_repetitions: int
    redeem_concurrency: tuple[int, ...]
    viewer_frames: int  # single-frame instances of the viewer-pattern study
    viewer_size: int  # its rows = columns (16-bit)
    viewer_opens: int  # study opens per side (direct, through a link), alternating
    viewer_connections: int  # parallel connections of the viewer (OHIF: about six)
    audit_count: int  # events per saturating emitter run
    audit_concurrency: tuple[int, ...]
    paced_rate: float  # events/s of the paced run (request → ledger latency)
    paced_seconds: float
    ledger_sizes: tuple[int, ...]
    ledger_samples: int  # proofs timed per size
    profile: bool  # py-spy the broker and the emitter (extra, separately reported runs)
    variants: bool  # what-if variants of the audit emitter
    noisy_retries: int  # re-measure a level this often when other work disturbed it

    def with_options(self, *, profile: bool | None, variants: bool | None) -> Plan:
        """This plan with profiling / what-if variants switched on or off (None: unchanged)."""
        plan = self if profile is None else replace(self, profile=profile)
        return plan if variants is None else replace(plan, variants=variants)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


QUICK = Plan(
    mode="quick",
    levels=(1, 16, 64),
    opa_count=400,
    broker_count=150,
    warmup=30,
    time_cap=8.0,
    workers=(1, 2),
    study_instances=40,
    redeem_repetitions=2,
    redeem_concurrency=(1,),
    viewer_frames=200,
    viewer_size=256,
    viewer_opens=3,
    viewer_connections=6,
    audit_count=2000,
    audit_concurrency=(256,),
    paced_rate=300.0,
    paced_seconds=3.0,
    ledger_sizes=(10_000,),
    ledger_samples=50,
    profile=False,
    variants=False,
    noisy_retries=0,
)

FULL = Plan(
    mode="full",
    levels=(1, 16, 64),
    opa_count=5000,
    broker_count=2000,
    warmup=200,
    time_cap=60.0,
    workers=(1, 2),
    study_instances=40,
    redeem_repetitions=10,
    redeem_concurrency=(1, 4),
    viewer_frames=240,
    viewer_size=256,
    viewer_opens=6,
    viewer_connections=6,
    audit_count=20_000,
    audit_concurrency=(64, 512),
    paced_rate=500.0,
    paced_seconds=20.0,
    ledger_sizes=(10_000, 100_000, 1_000_000),
    ledger_samples=200,
    profile=True,
    variants=True,
    noisy_retries=2,
)
