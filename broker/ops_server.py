"""A small HTTP listener for operations on a port of its own: the broker's ``/metrics``, the
audit consumers' ``/healthz`` and ``/readyz``.

It runs in a daemon thread beside the main loop (asyncio's or a consumer's), so it answers even
when that loop is busy, and it serves only the routes it is given: an Ingress on the broker's
``/`` never reaches it, and nothing else is behind it. Each route is a callable returning
``(status, content type, body)``; a route that raises answers 503 (fail closed: a health
check that cannot tell says "not healthy").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["OpsServer", "Route"]

log = logging.getLogger("telerad.ops")

# status, content type, body
Route = Callable[[], tuple[int, str, bytes]]


class OpsServer:
    """Serve ``routes`` (GET only) on ``host:port`` in a daemon thread; port 0 picks a free one."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route], *, name: str) -> None:
        self.name = name
        self._routes = dict(routes)
        routes_ = self._routes

        class Handler(BaseHTTPRequestHandler):
            server_version = "telerad-ops"
            sys_version = ""

            def do_GET(self) -> None:
                route = routes_.get(self.path.split("?", 1)[0])
                if route is None:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")
                    return
                try:
                    status, content_type, body = route()
                except Exception as exc:  # noqa: BLE001 - a check that cannot tell fails closed
                    log.warning("%s: %s failed: %s", name, self.path, type(exc).__name__)
                    status, content_type, body = 503, "text/plain; charset=utf-8", b"error\n"
                self._send(status, content_type, body)

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds: no access log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"telerad-{name}", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port (the one chosen when 0 was asked)."""
        return int(self._server.server_address[1])

    def start(self) -> OpsServer:
        """Start serving; returns itself."""
        self._thread.start()
        log.info("%s listening on port %d", self.name, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
