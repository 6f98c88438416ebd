"""Consent through FHIR against the real stack: Keycloak client credentials, OPA, Kafka, Orthanc.

The hospital's consent registry records a patient's refusal of external reading; both replicas
refuse that patient's study within a second, a replica started afterwards too, and a new permit
opens it again. The patient's id is never on the audit topic; errors are OperationOutcomes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.consent import Consent, ConsentProvision
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.reference import Reference
from kafka import KafkaConsumer

from broker.audit.cloudevents import from_record
from broker.fhir.consent import EXTERNAL_READING, PRIVACY_SCOPE
from devstack.kafka_cluster import CONSUMER, client_kwargs, kafka_env
from devstack.samples import sample_studies
from devstack.stack import Stack
from streams.ledger import load_private_key
from streams.ledger_store import SignedTreeHead
from streams.merkle import verify_inclusion
from tests.integration.conftest import LiveBroker, serve
from tests.integration.helpers import (
    decided,
    password_token,
    replica_settings,
    seconds_until_decided,
)

pytestmark = pytest.mark.integration

STUDY = {s.key: s for s in sample_studies()}
CHEST = STUDY["stolaf-ct-chest"]  # patient SO-0001 at st-olaf, assigned to ada
REGISTRY_SECRETS = {"hospital-a": "dev-consent-secret-a", "hospital-b": "dev-consent-secret-b"}


def registry_token(stack: Stack, realm: str = "hospital-a") -> str:
    """A service token of the hospital's consent registry (client credentials)."""
    answer = httpx.post(
        f"{stack.services['keycloak'].endpoints[realm]}/protocol/openid-connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "consent-registry",
            "client_secret": REGISTRY_SECRETS[realm],
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


def consent(patient_id: str, provision: str, facility: str = "st-olaf") -> dict[str, Any]:
    resource = Consent(
        status="active",
        scope=CodeableConcept(coding=[Coding(system=PRIVACY_SCOPE[0], code=PRIVACY_SCOPE[1])]),
        category=[
            CodeableConcept(coding=[Coding(system=EXTERNAL_READING[0], code=EXTERNAL_READING[1])])
        ],
        patient=Reference(
            identifier=Identifier(system="urn:oid:2.16.840.1.113883.19.5", value=patient_id)
        ),
        organization=[Reference(reference=f"Organization/{facility}")],
        provision=ConsentProvision(type=provision),
    )
    body: dict[str, Any] = json.loads(resource.model_dump_json(exclude_none=True))
    return body


@pytest.fixture
def replicas(broker_env: dict[str, str]) -> Iterator[list[LiveBroker]]:
    """Two replicas on fresh audit and control topics, with one pseudonym key (as in production)."""
    suffix = uuid.uuid4().hex[:10]
    env = {
        "TELERAD_AUDIT_SINK": "kafka",
        "TELERAD_KAFKA__AUDIT_TOPIC": f"audit-consent-{suffix}",
        "TELERAD_KAFKA__REVOCATION_TOPIC": f"revocations-consent-{suffix}",
        "TELERAD_PSEUDONYM_KEY": base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode(),
    }
    with mock.patch.dict(os.environ, env), ExitStack() as stack:
        yield [stack.enter_context(serve(replica_settings())) for _ in range(2)]


def fhir(live: LiveBroker, method: str, path: str, bearer: str | None, **kw: Any) -> httpx.Response:
    headers = {"Accept": "application/fhir+json"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    return httpx.request(method, f"{live.url}/fhir{path}", headers=headers, timeout=30, **kw)


def test_a_refusal_recorded_through_fhir_is_enforced_on_every_replica(
    stack: Stack, replicas: list[LiveBroker], tmp_path: Path
) -> None:
    a, b = replicas
    ada = password_token(stack.services["keycloak"].endpoints["hospital-a"], "ada")
    registry = registry_token(stack)
    assert decided(a, ada, CHEST.study_uid)["allow"] and decided(b, ada, CHEST.study_uid)["allow"]

    recorded = fhir(a, "POST", "/Consent", registry, json=consent("SO-0001", "deny"))
    assert recorded.status_code == 201, recorded.text
    assert recorded.headers["content-type"].startswith("application/fhir+json")
    stored = recorded.json()
    assert recorded.headers["location"] == f"/fhir/Consent/{stored['id']}"
    assert "SO-0001" not in recorded.text  # the patient only as the broker's pseudonym
    assert stored["patient"]["identifier"]["system"] == "urn:telerad:patient-pseudonym"

    # within a second on an idle machine (tens of ms here); 3 s leaves room for a loaded one
    on_a, on_b = (
        seconds_until_decided(r, ada, CHEST.study_uid, allow=False, limit=3) for r in (a, b)
    )
    print(
        f"\nconsent refusal in force: {on_a * 1000:.0f} ms on the replica that recorded it, "
        f"{on_b * 1000:.0f} ms on the other"
    )
    assert [r["code"] for r in decided(b, ada, CHEST.study_uid)["reasons"]] == ["consent_denied"]
    link = httpx.post(
        f"{b.url}/api/links",
        json={"study_uid": CHEST.study_uid},
        headers={"Authorization": f"Bearer {ada}"},
        timeout=30,
    )
    assert link.status_code == 403, link.text

    # the other replica reads it back, by id and by patient
    read = fhir(b, "GET", f"/Consent/{stored['id']}", registry)
    assert read.status_code == 200 and read.json()["id"] == stored["id"], read.text
    found = fhir(
        b, "GET", "/Consent", registry, params={"patient": "SO-0001", "facility": "st-olaf"}
    )
    assert found.status_code == 200 and found.json()["total"] == 1, found.text

    # a replica started afterwards learns it from the control topic
    with serve(replica_settings()) as late:
        took = seconds_until_decided(late, ada, CHEST.study_uid, allow=False)
        print(f"late replica: refusal in force after {took:.2f} s")

    permitted = fhir(b, "POST", "/Consent", registry, json=consent("SO-0001", "permit"))
    assert permitted.status_code == 201, permitted.text
    took = seconds_until_decided(a, ada, CHEST.study_uid, allow=True, limit=3)
    print(f"permit in force after {took * 1000:.0f} ms")
    seconds_until_decided(b, ada, CHEST.study_uid, allow=True, limit=3)
    listed = fhir(
        a, "GET", "/Consent", registry, params={"patient": "SO-0001", "facility": "st-olaf"}
    )
    assert listed.json()["total"] == 2

    # on the audit topic: who recorded what, and never the patient's id
    consumer = KafkaConsumer(
        os.environ["TELERAD_KAFKA__AUDIT_TOPIC"],
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        **client_kwargs(stack.services["kafka"], CONSUMER),
    )
    try:
        records = list(consumer)
    finally:
        consumer.close()
    assert not any(b"SO-0001" in r.value for r in records)
    changes = [
        e
        for e in (from_record(r.value, r.headers) for r in records)
        if e.kind.value == "consent.changed"
    ]
    assert [e.detail["consent"] for e in changes] == ["deny", "permit"]
    assert all(
        e.action == "record_consent" and e.subject and e.subject.startswith("sub:") for e in changes
    )

    # the ledger holds each consent record and proves it: the ledger consumer (as the consumers'
    # principal) reads the audit topic, then `telerad audit prove` gives an inclusion proof under
    # a signed head, which checks against that head's root
    ledger_env = (
        dict(os.environ)
        | kafka_env(stack.services["kafka"], CONSUMER)
        | {
            "TELERAD_STREAMS__LEDGER_PATH": str(tmp_path / "ledger.db"),
            "TELERAD_STREAMS__LEDGER_KEY_PATH": str(tmp_path / "key.pem"),
        }
    )
    ledger = audit_cli(ledger_env, "ledger", "--create-key", "--idle-exit", "4")
    assert ledger.returncode == 0, ledger.stderr[-2000:]
    key = load_private_key(tmp_path / "key.pem", create=False)
    for change in changes:
        proved = audit_cli(ledger_env, "prove", change.id)
        assert proved.returncode == 0, proved.stderr[-2000:]
        proof = json.loads(proved.stdout)
        assert proof["event"]["id"] == change.id
        assert proof["event"]["kind"] == "consent.changed"
        assert proof["event"]["detail"]["consent"] == change.detail["consent"]
        head = SignedTreeHead.from_json(json.dumps(proof["head"]))
        assert head.verify(key.public_key())  # signed by the ledger's key
        leaf = base64.b64decode(proof["leaf_hash"])
        path = [base64.b64decode(p) for p in proof["proof"]]
        assert verify_inclusion(leaf, proof["leaf_index"], head.size, path, head.root)
        assert not verify_inclusion(leaf, proof["leaf_index"], head.size, path, bytes(32))
    forged = audit_cli(ledger_env, "prove", str(uuid.uuid4()))
    assert forged.returncode != 0  # an event the ledger never saw has no proof


def audit_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``telerad audit ...`` in its own process, as an auditor runs it."""
    return subprocess.run(
        [sys.executable, "-m", "broker", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_who_may_not_record_consent_gets_an_operation_outcome(
    stack: Stack, replicas: list[LiveBroker]
) -> None:
    a, _ = replicas
    ada = password_token(stack.services["keycloak"].endpoints["hospital-a"], "ada")
    body = consent("SO-0001", "deny")
    cases = {
        "no token": (fhir(a, "POST", "/Consent", None, json=body), 401),
        "a radiologist": (fhir(a, "POST", "/Consent", ada, json=body), 403),
        # hospital B's registry speaks for mercy-ny, not for St Olaf
        "another hospital": (
            fhir(a, "POST", "/Consent", registry_token(stack, "hospital-b"), json=body),
            403,
        ),
        "not a Consent": (
            fhir(a, "POST", "/Consent", registry_token(stack), json={"resourceType": "Patient"}),
            400,
        ),
        "not JSON": (fhir(a, "POST", "/Consent", registry_token(stack), content=b"{"), 400),
        "unknown id": (fhir(a, "GET", "/Consent/nope", registry_token(stack)), 404),
        "search without facility": (
            fhir(a, "GET", "/Consent", registry_token(stack), params={"patient": "SO-0001"}),
            400,
        ),
    }
    for name, (answer, status) in cases.items():
        assert answer.status_code == status, (name, answer.text)
        assert answer.json()["resourceType"] == "OperationOutcome", name
        assert answer.headers["content-type"].startswith("application/fhir+json"), name
    assert decided(a, ada, CHEST.study_uid)["allow"]  # nothing refused changed anything
    metadata = httpx.get(f"{a.url}/fhir/metadata", timeout=30)
    assert metadata.json()["resourceType"] == "CapabilityStatement"
