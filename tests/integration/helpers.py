"""Talking to the real IdP from tests: password-grant tokens and a browser login over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import struct
import subprocess
import sys
import time
from typing import Any, Protocol

import httpx
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_auth
from requests.auth import HTTPBasicAuth

from broker.config import Settings
from broker.links.token import LinkClaims
from devstack._procs import free_port
from devstack.services import Service

# Dev-only values from devstack/resources/keycloak/*.json.
PASSWORD = "dev-password"
API_SECRETS = {"hospital-a": "dev-api-secret-a", "hospital-b": "dev-api-secret-b"}
EVE_TOTP_BASE32 = "ORSWYZLSMFSC2ZDFOYWWK5TFFV2G65DQ"

_FORM_ACTION = re.compile(r'<form[^>]*\baction="([^"]+)"', re.IGNORECASE)


def totp(secret_base32: str, at: float | None = None) -> str:
    """RFC 6238 TOTP (SHA-1, 6 digits, 30 s)."""
    key = base64.b32decode(secret_base32)
    counter = int((at or time.time()) // 30)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def password_token(realm_url: str, username: str, realm: str = "hospital-a", **extra: str) -> str:
    """An access token from a real password grant (the test client `telerad-api`)."""
    response = httpx.post(
        f"{realm_url}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": "telerad-api",
            "client_secret": API_SECRETS[realm],
            "username": username,
            "password": PASSWORD,
            "scope": "openid",
            **extra,
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def form_action(page: str) -> str:
    match = _FORM_ACTION.search(page)
    assert match, f"no form on the IdP page:\n{page[:2000]}"
    return html.unescape(match.group(1))


async def browser_login(
    client: httpx.AsyncClient,
    broker_url: str,
    *,
    idp: str,
    username: str,
    next_path: str = "/api/me",
    otp_secret: str | None = None,
    acr_values: str | None = None,
) -> httpx.Response:
    """Drive the real login: broker → IdP login form (→ OTP form) → broker callback → next."""
    params = {"idp": idp, "next": next_path}
    if acr_values:
        params["acr_values"] = acr_values
    start = await client.get(f"{broker_url}/auth/login", params=params)
    assert start.status_code == 302, start.text
    page = await client.get(start.headers["location"])
    assert page.status_code == 200, page.text
    answer = await client.post(
        form_action(page.text),
        data={"username": username, "password": PASSWORD, "credentialId": ""},
    )
    if answer.status_code == 200 and otp_secret is not None:
        answer = await client.post(form_action(answer.text), data={"otp": totp(otp_secret)})
    assert answer.status_code == 302, answer.text[:2000]
    callback = answer.headers["location"]
    assert callback.startswith(f"{broker_url}/auth/callback"), callback
    return await client.get(callback)


def keycloak_admin(base_url: str) -> dict[str, str]:
    """Headers for Keycloak's admin API (the stack's dev-only bootstrap admin)."""
    from devstack.services import KEYCLOAK_ADMIN_PASSWORD

    response = httpx.post(
        f"{base_url}/realms/master/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": "admin",
            "password": KEYCLOAK_ADMIN_PASSWORD,
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def expired_link(study_uid: str, subject: str = "npi:1000000001") -> LinkClaims:
    """The claims of a link to ``study_uid`` that expired a second ago (seal them to use them)."""
    now = int(time.time())
    return LinkClaims(
        subject=subject,
        issuer="x",
        study_uid=study_uid,
        operations=("view",),
        expires_at=now - 1,
        issued_at=now - 600,
        binding={"sid": "s"},
    )


def transfer_records(
    audit: Any, link_id: str | None = None, *, at_least: int = 1, requests: int | None = None
) -> list[Any]:
    """The ``link.transferred`` events a broker has flushed, waiting a few flush intervals until
    there are ``at_least`` of them or, with ``requests``, until they count that many requests
    (one open's reads may be split over several flushes)."""
    deadline = time.monotonic() + 5
    while True:
        found = [
            e
            for e in audit.events
            if e.kind.value == "link.transferred" and link_id in (None, e.link_id)
        ]
        counted = sum(e.detail["requests"] for e in found)
        enough = counted >= requests if requests is not None else len(found) >= at_least
        if enough or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def publish_worklist(
    stack: Any, topic: str, study_uid: str, readers: list[str], kind: str = "", **fields: Any
) -> None:
    """Publish one worklist event for ``study_uid`` as the RIS's principal (acknowledged)."""
    from broker.worklist import WorklistEvent, WorklistKind
    from broker.worklist.publish import publish
    from devstack.kafka_cluster import RIS, security_kwargs

    kafka = stack.services["kafka"]
    event = WorklistEvent(
        kind=WorklistKind(kind or ("assigned" if readers else "unassigned")),
        study_uid=study_uid,
        facility=fields.pop("facility", "st-olaf"),
        readers=readers,
        assigning_system=fields.pop("assigning_system", "ris-test"),
        **fields,
    )
    publish(
        [event],
        bootstrap=kafka.endpoints["bootstrap"],
        topic=topic,
        client_config=security_kwargs(kafka, RIS),
    )


def orthanc_dicomweb(orthanc: Service) -> DICOMwebClient:
    """A DICOMweb client straight to the stack's Orthanc: basic auth, its CA (and the client
    certificate when it requires one), so the comparison reads what the PACS serves."""
    session: requests.Session = create_session_from_auth(
        HTTPBasicAuth(str(orthanc.extra["user"]), str(orthanc.extra["password"]))
    )
    if orthanc.extra.get("ca_file"):
        session.verify = str(orthanc.extra["ca_file"])
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override session.verify; loopback
        # needs neither proxies nor netrc from the environment
        session.trust_env = False
    if orthanc.extra.get("tls") == "mutual":
        session.cert = (str(orthanc.extra["client_cert"]), str(orthanc.extra["client_key"]))
    return DICOMwebClient(url=orthanc.endpoints["dicomweb"], session=session)


class Served(Protocol):
    """A broker running for a test (``conftest.serve``): all the helpers need is its URL."""

    url: str


def decision(live: Served, bearer: str, study_uid: str) -> httpx.Response:
    """``POST /api/decisions`` for ``study_uid``, asked with ``bearer``."""
    return httpx.post(
        f"{live.url}/api/decisions",
        json={"study_uid": study_uid},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=30,
    )


def decided(live: Served, bearer: str, study_uid: str) -> dict[str, Any]:
    """The decision's body; anything but a 200 fails the test with the broker's answer."""
    answer = decision(live, bearer, study_uid)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def seconds_until_decided(
    live: Served, bearer: str, study_uid: str, *, allow: bool, limit: float = 10.0
) -> float:
    """Seconds until ``live`` decides ``allow`` for the study (fails after ``limit``)."""
    started = time.monotonic()
    while decided(live, bearer, study_uid)["allow"] is not allow:
        assert time.monotonic() - started < limit, f"{live.url} never decided allow={allow}"
        time.sleep(0.02)
    return time.monotonic() - started


def replica_settings() -> Settings:
    """The settings of one more broker replica: the environment's, on a port of its own."""
    return Settings(public_url=f"http://127.0.0.1:{free_port()}")


def telerad(
    *args: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``python -m broker *args``; a run that outlives ``timeout`` fails showing its stderr."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "broker", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        raise AssertionError(
            f"telerad {' '.join(args)} still running after {timeout:.0f} s; "
            f"its stderr ends:\n{(err or '')[-3000:]}"
        ) from None


def run_exports(topic: str, env: dict[str, str]) -> dict[str, dict[str, int]]:
    """``telerad audit export`` of ``topic`` in both formats, each in a group of this topic's
    own (nothing left by another test): the summary each printed, by format."""
    summaries = {}
    for fmt in ("fhir", "dicom"):
        group = f"export-{fmt}-{topic}"
        done = telerad(
            *("audit", "export", "--format", fmt, "--group", group, "--idle-exit", "4"), env=env
        )
        assert done.returncode == 0, done.stderr[-2000:]
        summaries[fmt] = json.loads(done.stdout.strip().splitlines()[-1])
    return summaries
