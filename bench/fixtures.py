"""What the benchmarks send: real tokens, the broker's own policy inputs, a large study.

Everything here talks to the running stack: tokens come from Keycloak with a password grant
(the dev realm's test client), principals are validated exactly as the broker validates them,
study facts are read from Orthanc exactly as the broker reads them, and the policy input is
built with :meth:`broker.policy.PolicyEnforcer.build_input`.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from broker.config import IdentitySettings, IssuerSettings, PacsSettings
from broker.dicomweb.facts import FactsCatalog, StudyFacts, StudyFactsSource
from broker.identity.bearer import BearerValidator
from broker.identity.principal import Principal
from broker.policy import PolicyEnforcer, RequestContext
from devstack.samples import sample_studies

__all__ = [
    "ADA",
    "LargeStudy",
    "TokenPool",
    "allow_in_policy",
    "b64u_key",
    "bench_facts_file",
    "build_large_study",
    "check_allowed",
    "fetch_tokens",
    "policy_input",
    "store_study",
]

ADA = "ada"  # npi:1000000001, hospital-a: assigned to the St Olaf chest CT, may download
_REALM = "hospital-a"
# Dev-only values from devstack/resources/keycloak/hospital-a.json (loopback stack only).
_API_CLIENT = "telerad-api"
_API_SECRET = "dev-api-secret-a"  # noqa: S105
_PASSWORD = "dev-password"  # noqa: S105
_UID_ROOT = "1.2.826.0.1.3680043.10.1119."  # the samples' synthetic root; never real patients
_INSTITUTION = "St Olaf Community Hospital"
_ADA_NPI = "npi:1000000001"


def b64u_key(text: str) -> bytes:
    """A key given as unpadded base64url (as in ``TELERAD_PSEUDONYM_KEY``)."""
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fetch_tokens(keycloak_realm_url: str, user: str = ADA, count: int = 1) -> list[str]:
    """``count`` access tokens from real password grants (each one distinct).

    The dev realms have brute-force detection with a 100 ms quick-login check, so grants are
    spaced out, and a temporary lock-out is waited for (it lasts a few seconds) and retried.
    """
    tokens: list[str] = []
    with httpx.Client(timeout=30) as client:
        deadline = time.monotonic() + 90
        while len(tokens) < count:
            time.sleep(0.25)
            response = client.post(
                f"{keycloak_realm_url}/protocol/openid-connect/token",
                data={
                    "grant_type": "password",
                    "client_id": _API_CLIENT,
                    "client_secret": _API_SECRET,
                    "username": user,
                    "password": _PASSWORD,
                    "scope": "openid",
                },
            )
            if response.status_code in (400, 401) and time.monotonic() < deadline:
                time.sleep(5)  # temporarily disabled by the quick-login check: it passes
                continue
            response.raise_for_status()
            tokens.append(str(response.json()["access_token"]))
    return tokens


class TokenPool:
    """A few tokens of one user, renewed before they expire (the realm's live 5 minutes)."""

    def __init__(self, realm_url: str, size: int = 2, max_age: float = 150.0) -> None:
        self._realm_url = realm_url
        self._size = size
        self._max_age = max_age
        self._tokens: list[str] = []
        self._fetched = 0.0

    def tokens(self) -> list[str]:
        """Tokens with at least ``300 - max_age`` seconds to live."""
        if not self._tokens or time.monotonic() - self._fetched > self._max_age:
            self._tokens = fetch_tokens(self._realm_url, count=self._size)
            self._fetched = time.monotonic()
        return list(self._tokens)


async def principal_of(token: str, issuers_json: str) -> Principal:
    """The principal the broker makes of ``token`` (same validator, same claim mapping)."""
    issuers = [IssuerSettings.model_validate(i) for i in json.loads(issuers_json)]
    async with httpx.AsyncClient(timeout=10) as http:
        return await BearerValidator(IdentitySettings(), issuers, http).validate(token)


async def study_facts(env: dict[str, str], study_uid: str, pseudonym_key: bytes) -> StudyFacts:
    """The study's facts as the broker reads them (QIDO-RS at Orthanc + the facts file)."""
    pacs = PacsSettings(
        url=env["TELERAD_PACS__URL"],
        username=env["TELERAD_PACS__USERNAME"],
        password=env["TELERAD_PACS__PASSWORD"],
    )
    catalog = FactsCatalog.load(Path(env["TELERAD_FACTS_FILE"]))
    async with httpx.AsyncClient(timeout=10) as http:
        source = StudyFactsSource(pacs, http, catalog, pseudonym_key=pseudonym_key)
        return await source.get(study_uid)


async def policy_input(
    env: dict[str, str],
    token: str,
    study_uid: str,
    *,
    action: str = "issue_link",
    operations: tuple[str, ...] = ("view",),
    pseudonym_key: bytes,
) -> dict[str, Any]:
    """The exact ``input`` the broker sends OPA for this token, action and study."""
    principal = await principal_of(token, env["TELERAD_ISSUERS"])
    facts = await study_facts(env, study_uid, pseudonym_key)
    context = RequestContext(client_ip="127.0.0.1", user_agent="telerad-bench/1", now=time.time())
    return PolicyEnforcer.build_input(principal, action, list(operations), facts, context)


def sample_uid(key: str) -> str:
    """The Study Instance UID of one of the stack's sample studies."""
    return next(s.study_uid for s in sample_studies() if s.key == key)


@dataclass(frozen=True)
class LargeStudy:
    """A bench-only CT study: its UID and its instances (DICOM Part 10 bytes)."""

    study_uid: str
    instances: list[bytes]

    @property
    def nbytes(self) -> int:
        """Total size of the instances."""
        return sum(len(i) for i in self.instances)


def build_large_study(instances: int = 40, size: int = 512, name: str = "large-ct") -> LargeStudy:
    """``instances`` slices of ``size`` x ``size`` 16-bit CT, tiled from pydicom's CT_small.

    About 0.5 MB per slice at 512 x 512 (20 MB for 40): the size of a small real CT series,
    where the stack's sample studies are ~40 KB per instance. ``name`` keeps the UIDs of two
    bench studies apart.
    """
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import UID, generate_uid

    source = get_testdata_file("CT_small.dcm")
    if source is None:
        raise FileNotFoundError("pydicom's CT_small.dcm is not bundled")
    template = pydicom.dcmread(source)
    tile = template.pixel_array
    reps = (-(-size // tile.shape[0]), -(-size // tile.shape[1]))
    pixels = np.tile(tile, reps)[:size, :size].astype(tile.dtype)
    study_uid = str(generate_uid(prefix=_UID_ROOT, entropy_srcs=["bench", name, "study"]))
    series_uid = str(generate_uid(prefix=_UID_ROOT, entropy_srcs=["bench", name, "series"]))
    out = []
    for index in range(instances):
        ds = pydicom.dcmread(source)
        sop_uid = str(generate_uid(prefix=_UID_ROOT, entropy_srcs=["bench", name, str(index)]))
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.InstanceNumber = index + 1
        ds.SliceLocation = float(index)
        ds.PatientID = "BENCH-0001"
        ds.PatientName = "Synthetic^Bench"
        ds.InstitutionName = _INSTITUTION
        ds.AccessionNumber = "BENCHLARGECT"
        ds.StudyDescription = f"bench-{name}"
        ds.Rows, ds.Columns = size, size
        # a different image per slice (rolled), so nothing downstream can deduplicate them
        ds.PixelData = np.roll(pixels, index * 7, axis=0).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return LargeStudy(study_uid, out)


def store_study(orthanc_url: str, auth: tuple[str, str], study: LargeStudy) -> None:
    """Store the study's instances in Orthanc through its REST API (idempotent)."""
    with httpx.Client(base_url=orthanc_url, auth=auth, timeout=60) as client:
        for blob in study.instances:
            client.post("/instances", content=blob).raise_for_status()


def publish_fingerprints(
    orthanc_url: str, auth: tuple[str, str], study: LargeStudy, bootstrap: str, topic: str
) -> int:
    """Fingerprint the study's instances as ``telerad integrity watch`` does and publish them to
    the fingerprint topic (keyed by SOP Instance UID), so the broker checks the study's reads."""
    import pydicom

    from broker.audit.cloudevents import to_record
    from broker.audit.kafka import make_producer
    from streams.integrity import OrthancFeed

    feed = OrthancFeed(orthanc_url, auth)
    producer = make_producer(bootstrap)
    try:
        with httpx.Client(base_url=orthanc_url, auth=auth, timeout=60) as client:
            sent = []
            for blob in study.instances:
                sop_uid = str(
                    pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True).SOPInstanceUID
                )
                (found,) = client.post("/tools/lookup", content=sop_uid).json()
                event = feed.fingerprint(found["ID"], 0).event()
                _, value, headers = to_record(event, source="/telerad-broker/bench")
                sent.append(
                    producer.send(topic, key=sop_uid.encode(), value=value, headers=headers)
                )
            for future in sent:
                future.get(timeout=30)
        return len(sent)
    finally:
        producer.close(5)
        feed.close()


def bench_facts_file(stack_facts: Path, out: Path, *study_uids: str) -> Path:
    """A copy of the stack's facts file with the bench studies added (labels none, consent)."""
    facts = json.loads(stack_facts.read_text())
    facts.setdefault("institutions", {})[_INSTITUTION] = "st-olaf"
    for study_uid in study_uids:
        facts.setdefault("studies", {})[study_uid] = {
            "labels": [],
            "consent": "permit",
            "referring_physician": None,
        }
    out.write_text(json.dumps(facts, indent=2))
    return out


def allow_in_policy(opa_url: str, study_uid: str) -> bool:
    """Put the bench study on ada's worklist in OPA's data, where OPA lets its data be written.

    The stack serves the policy as a bundle, whose data OPA keeps read-only (400): then the
    study is allowed through ada's reading-group coverage of St Olaf, which
    :func:`check_allowed` confirms. Returns whether the assignment was written.
    """
    patch = [{"op": "add", "path": f"/assignments/{study_uid}", "value": [_ADA_NPI]}]
    response = httpx.patch(f"{opa_url}/v1/data/telerad", json=patch, timeout=10)
    if response.status_code == 400:
        return False
    response.raise_for_status()
    return True


def check_allowed(opa_url: str, policy_input: dict[str, Any]) -> list[str]:
    """The reason codes of an allowing decision for ``policy_input``; raise if it denies."""
    response = httpx.post(
        f"{opa_url}/v1/data/telerad/access/decision", json={"input": policy_input}, timeout=10
    )
    response.raise_for_status()
    result = response.json().get("result", {})
    codes = [str(r.get("code")) for r in result.get("reasons", [])]
    if result.get("allow") is not True:
        raise RuntimeError(f"the policy denies ada the bench study: {codes}")
    return codes
