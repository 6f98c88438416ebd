"""App factories for ``uvicorn --factory`` (``telerad serve`` has no ``--workers``).

:func:`app` builds the broker from the ``TELERAD_*`` environment exactly as ``telerad serve``
does; the bench gives every worker the same link, session and pseudonym keys. :func:`whatif_app`
is the same broker with what-if features of :mod:`bench.audit_emit` applied in-process
(``BENCH_WHATIF=linger-0``), to size a proposal without changing the broker.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from broker.app import create_app
from broker.config import Settings

__all__ = ["app", "whatif_app"]


def app() -> FastAPI:
    """The broker application, configured from the environment."""
    return create_app(Settings())


def whatif_app() -> FastAPI:
    """The broker with the audit what-if features named in ``BENCH_WHATIF`` applied."""
    from bench.audit_emit import apply_features

    apply_features(os.environ.get("BENCH_WHATIF", "baseline"))
    return create_app(Settings())
