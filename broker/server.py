"""How the broker is served: one uvicorn configuration for ``telerad serve`` and the tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

    from broker.config import Settings

__all__ = ["server_config"]


def server_config(
    app: ASGIApp, settings: Settings, *, log_level: str | None = None
) -> uvicorn.Config:
    """uvicorn's configuration of ``app`` on ``settings.host`` and ``settings.port``.

    Forwarding headers (``X-Forwarded-For``, ``X-Forwarded-Proto``) are believed only from
    ``settings.trusted_proxies``; from any other peer they are ignored and the client address is
    the peer's own. No access log (the audit stream and the structured log say what happened)
    and no ``Server`` header.
    """
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=(log_level or settings.log_level).lower(),
        access_log=False,
        server_header=False,
        proxy_headers=True,
        forwarded_allow_ips=[str(network) for network in settings.trusted_proxies],
        lifespan="on",
    )
