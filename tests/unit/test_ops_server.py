"""The operations listener: /metrics on a port of its own, and nothing else there."""

from __future__ import annotations

import httpx
import pytest

from broker.app import create_app
from broker.config import Settings
from broker.metrics import Metrics, metrics_server
from broker.ops_server import OpsServer


def _settings(**overrides: object) -> Settings:
    return Settings(environment="development", audit_sink="log", **overrides)  # type: ignore[arg-type]


class TestOpsServer:
    def test_serves_only_its_routes(self) -> None:
        server = OpsServer(
            "127.0.0.1", 0, {"/healthz": lambda: (200, "text/plain", b"ok\n")}, name="t"
        ).start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            ok = httpx.get(f"{base}/healthz?probe=1")
            assert (ok.status_code, ok.text) == (200, "ok\n")
            assert ok.headers["cache-control"] == "no-store"
            assert httpx.get(f"{base}/metrics").status_code == 404
            assert httpx.post(f"{base}/healthz").status_code == 501  # GET only
        finally:
            server.stop()

    def test_a_route_that_raises_fails_closed(self) -> None:
        def broken() -> tuple[int, str, bytes]:
            raise RuntimeError("cannot tell")

        server = OpsServer("127.0.0.1", 0, {"/readyz": broken}, name="t").start()
        try:
            r = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
            assert r.status_code == 503, r.text
        finally:
            server.stop()

    def test_stop_releases_the_port(self) -> None:
        server = OpsServer("127.0.0.1", 0, {}, name="t").start()
        port = server.port
        server.stop()
        again = OpsServer("127.0.0.1", port, {}, name="t")  # would raise if still bound
        again.stop()


class TestMetricsServer:
    def test_metrics_on_their_own_port(self) -> None:
        metrics = Metrics()
        metrics.policy_errors.labels(code="policy_unavailable").inc(2)
        server = metrics_server(_settings(metrics_port=0), metrics)
        assert server is not None
        try:
            r = httpx.get(f"http://127.0.0.1:{server.port}/metrics")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("text/plain; version=")
            assert 'telerad_policy_errors_total{code="policy_unavailable"} 2.0' in r.text
        finally:
            server.stop()

    def test_none_serves_no_metrics(self) -> None:
        assert metrics_server(_settings(metrics_port=None), Metrics()) is None

    def test_default_port(self) -> None:
        assert Settings.model_fields["metrics_port"].default == 9464

    def test_not_a_route_of_the_app(self) -> None:
        app = create_app(_settings(metrics_port=0))
        paths = {getattr(route, "path", None) for route in app.routes}
        assert "/metrics" not in paths
        assert "/healthz" in paths


@pytest.mark.parametrize("port", [-1, 65536])
def test_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        _settings(metrics_port=port)
