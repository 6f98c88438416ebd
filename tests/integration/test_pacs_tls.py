"""The PACS over HTTPS, against the real stack's Orthanc (TLS from a CA made at start).

The broker verifies Orthanc's certificate against the configured CA bundle, host name included;
a PACS whose certificate another CA signed is refused (readiness names it, the proxy answers
502 with the usual error body, no stack trace); an Orthanc that requires client certificates
(mutual TLS) is read with the broker's and refuses a client without one.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.config import Settings
from devstack import services
from devstack.pki import DevCa
from devstack.samples import load_samples
from devstack.services import Service
from devstack.stack import Stack
from tests.integration.conftest import LiveBroker
from tests.integration.test_links import STUDY, issue, token

pytestmark = pytest.mark.integration

# how a TLS 1.3 client learns that its missing certificate was refused (alert, or a closed pipe)
_REFUSED = r"CERTIFICATE_REQUIRED|Broken pipe|Connection reset"


def _app(monkeypatch: pytest.MonkeyPatch, stack: Stack, **overrides: str) -> TestClient:
    for key, value in (stack.broker_env() | overrides).items():
        monkeypatch.setenv(key, value)
    for key in [k for k in overrides if overrides[k] == ""]:
        monkeypatch.delenv(key)  # an empty override removes the stack's setting
    return TestClient(create_app(Settings()))


def _readyz_pacs(client: TestClient, want: bool, seconds: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while True:
        check: dict[str, object] = client.get("/readyz").json()["checks"]["pacs"]
        if check["ready"] is want or time.monotonic() > deadline:
            return check
        time.sleep(0.2)


def _issue(client: TestClient, bearer: str, study: str = "stolaf-ct-chest") -> httpx.Response:
    return client.post(
        "/api/links",
        json={"study_uid": STUDY[study].study_uid, "operations": ["view"]},
        headers={"Authorization": f"Bearer {bearer}"},
    )


class TestHttps:
    def test_the_stack_pacs_is_https_with_its_ca(self, stack: Stack) -> None:
        orthanc = stack.services["orthanc"]
        env = stack.broker_env()
        if orthanc.extra.get("tls") == "plaintext":
            pytest.skip("TELERAD_STACK_ORTHANC_PLAINTEXT=1: the stack's Orthanc speaks HTTP")
        assert env["TELERAD_PACS__URL"].startswith("https://"), env["TELERAD_PACS__URL"]
        assert Path(env["TELERAD_PACS__TLS__CA_FILE"]).read_bytes().startswith(b"-----BEGIN")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{orthanc.endpoints['url']}/system")  # the system store does not know it

    def test_proxy_reads_through_https(self, live_broker: LiveBroker, stack: Stack) -> None:
        assert str(live_broker.app.state.telerad.settings.pacs.url).startswith("https://")
        ada = token(stack, "ada")
        link = issue(live_broker, ada, "stolaf-ct-chest", ["view"])
        response = httpx.get(
            f"{link['url']}/metadata", headers={"Authorization": f"Bearer {ada}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        uids = {i["0020000D"]["Value"][0] for i in response.json()}
        assert uids == {STUDY["stolaf-ct-chest"].study_uid}


class TestUntrustedPacs:
    @pytest.fixture
    def impostor_ca(self, tmp_path: Path) -> str:
        """A CA bundle that did not sign the stack's Orthanc."""
        return str(DevCa("not the PACS's CA").write(tmp_path / "other-ca.pem"))

    def test_readiness_names_the_refused_certificate(
        self, stack: Stack, monkeypatch: pytest.MonkeyPatch, impostor_ca: str
    ) -> None:
        with _app(monkeypatch, stack, TELERAD_PACS__TLS__CA_FILE=impostor_ca) as client:
            check = _readyz_pacs(client, want=False)
            answer = client.get("/readyz")
        assert check["ready"] is False
        assert "CERTIFICATE_VERIFY_FAILED" in str(check["detail"]), check
        assert answer.status_code == 503, answer.text

    def test_proxy_answers_502_without_a_stack_trace(
        self,
        stack: Stack,
        monkeypatch: pytest.MonkeyPatch,
        impostor_ca: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        ada = token(stack, "ada")
        # two replicas sharing their link keys: one trusts the PACS's CA, the other was given
        # the wrong bundle
        keys = {
            "TELERAD_LINKS__KEYS": json.dumps(
                {"k1": base64.urlsafe_b64encode(b"L" * 32).decode().rstrip("=")}
            ),
            "TELERAD_LINKS__ACTIVE_KEY": "k1",
        }
        with _app(monkeypatch, stack, **keys) as trusting:
            issued_here = _issue(trusting, ada)
            assert issued_here.status_code == 200, issued_here.text
            path = urlsplit(issued_here.json()["url"]).path + "/metadata"
            assert trusting.get(path, headers={"Authorization": f"Bearer {ada}"}).status_code == 200
        with _app(monkeypatch, stack, TELERAD_PACS__TLS__CA_FILE=impostor_ca, **keys) as client:
            redeemed = client.get(path, headers={"Authorization": f"Bearer {ada}"})
            issued = _issue(client, ada)
        for response in (redeemed, issued):
            assert response.status_code == 502, response.text
            assert response.json()["error"] == "bad_gateway", response.text
            assert "Traceback" not in response.text and "SSL" not in response.text
        # the broker's JSON log (stderr): the cause on one line for the operator, no traceback
        lines = [
            json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"
        ]
        refused = [e for e in lines if "CERTIFICATE_VERIFY_FAILED" in e.get("msg", "")]
        assert refused, lines
        assert all(e["level"] == "warning" and "error" not in e for e in refused), refused


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """An Orthanc of its own that requires a client certificate, with the sample studies."""
    orthanc = services.start_orthanc(tmp_path_factory.mktemp("mtls"), tls="mutual")
    try:
        load_samples(orthanc)  # with the client certificate
        yield orthanc
    finally:
        orthanc.stop()


class TestMutualTls:
    def test_without_a_client_certificate_orthanc_refuses(self, mutual: Service) -> None:
        context = services.orthanc_ssl_context(mutual, client_cert=False)
        assert context is not None
        with pytest.raises(httpx.TransportError, match=_REFUSED):
            httpx.get(
                f"{mutual.endpoints['url']}/system",
                verify=context,
                auth=(services.ORTHANC_USER, services.ORTHANC_PASSWORD),
            )
        with services.orthanc_client(mutual) as with_cert:
            assert with_cert.get("/system").status_code == 200

    def test_broker_reads_with_its_client_certificate(
        self, stack: Stack, mutual: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        env = services.orthanc_broker_env(mutual)
        assert "TELERAD_PACS__TLS__CERT_FILE" in env
        ada = token(stack, "ada")
        with _app(monkeypatch, stack, **env) as client:
            check = _readyz_pacs(client, want=True)
            issued = _issue(client, ada)
            assert issued.status_code == 200, issued.text
            metadata = client.get(
                urlsplit(issued.json()["url"]).path + "/metadata",
                headers={"Authorization": f"Bearer {ada}"},
            )
        assert check["ready"] is True, check
        assert metadata.status_code == 200, metadata.text

    def test_broker_without_its_client_certificate_is_refused(
        self, stack: Stack, mutual: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        env = services.orthanc_broker_env(mutual, client_cert=False)
        # the stack's own Orthanc may be mutual too: drop any client certificate it set
        env |= {"TELERAD_PACS__TLS__CERT_FILE": "", "TELERAD_PACS__TLS__KEY_FILE": ""}
        with _app(monkeypatch, stack, **env) as client:
            check = _readyz_pacs(client, want=False)
            issued = _issue(client, token(stack, "ada"))
        assert check["ready"] is False
        # TLS 1.3: the server refuses after the handshake; the client reads its alert
        # (CERTIFICATE_REQUIRED) or, when it writes first, finds the connection closed
        assert re.search(_REFUSED, str(check["detail"])), check
        assert issued.status_code == 502, issued.text
