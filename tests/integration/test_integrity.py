"""A ransomware drill against the real stack: fingerprints at ingest, files altered behind the
PACS's back; the next read of each through a link is cut off and alerted, untouched instances
still read, and the sweep names exactly the altered ones."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from kafka import KafkaConsumer

from broker.audit.cloudevents import from_record
from broker.audit.events import AuditEvent, EventKind
from broker.config import Settings
from devstack.kafka_cluster import CONSUMER, client_kwargs, kafka_env
from devstack.samples import build_instances, sample_studies
from devstack.services import orthanc_client
from devstack.stack import Stack
from streams.alerts import Alert, AlertDetector
from tests.integration.conftest import LiveBroker, serve
from tests.integration.test_audit_stream import token, topics

__all__ = ["topics"]  # the fixture, shared with the audit stream's tests

pytestmark = pytest.mark.integration


def telerad(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def answer(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.stdout.strip(), done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


SAMPLE = next(s for s in sample_studies() if s.key == "stolaf-ct-chest")  # ada reads it


def drill_instances(n: int) -> list[bytes]:
    """``n`` new CT instances in a new series of ada's sample study (so a link of hers reads
    them), with synthetic UIDs; the drill deletes them at its end."""
    import pydicom
    from pydicom.uid import generate_uid

    template = build_instances(SAMPLE)[0]
    series = generate_uid()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(io.BytesIO(template))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def test_altered_files_are_named_by_the_sweep_and_nothing_else(
    stack: Stack, topics: dict[str, str], broker_env: dict[str, str], tmp_path: Path
) -> None:
    orthanc = stack.services["orthanc"]
    rest = orthanc_client(orthanc, timeout=30)
    env = os.environ | {
        "TELERAD_STREAMS__LEDGER_PATH": str(tmp_path / "ledger.db"),
        "TELERAD_STREAMS__LEDGER_KEY_PATH": str(tmp_path / "key.pem"),
        "TELERAD_STREAMS__INTEGRITY_CURSOR_PATH": str(tmp_path / "cursor.json"),
        "TELERAD_STREAMS__SEGMENTS_TOPIC": "segments-" + topics["TELERAD_KAFKA__AUDIT_TOPIC"],
        "TELERAD_KAFKA__FINGERPRINT_TOPIC": "fingerprints-" + topics["TELERAD_KAFKA__AUDIT_TOPIC"],
    }
    on_pacs = len(rest.get("/instances").json())

    # first start: what the PACS holds is fingerprinted (backfill)
    first = answer(telerad(env, "integrity", "watch", "--idle-exit", "2"))
    assert first == {"backfilled": on_pacs, "recorded": 0}, first

    # new instances arrive: the change feed brings them, once
    stored = [rest.post("/instances", content=blob).json() for blob in drill_instances(3)]
    try:
        drill(env, stack, rest, orthanc, stored, on_pacs)
    finally:  # the stack is shared: the drill's study goes, altered files and all
        for instance in stored:
            rest.delete(f"/instances/{instance['ID']}")


def drill(
    env: dict[str, str],
    stack: Stack,
    rest: httpx.Client,
    orthanc: Any,
    stored: list[dict[str, Any]],
    on_pacs: int,
) -> None:
    second = answer(telerad(env, "integrity", "watch", "--idle-exit", "2"))
    assert second == {"backfilled": 0, "recorded": 3}, second
    again = answer(telerad(env, "integrity", "watch", "--idle-exit", "2"))
    assert again == {"backfilled": 0, "recorded": 0}, again  # a restart repeats nothing

    # the watcher wrote as the broker; the ledger reads as a consumer
    ledger = env | kafka_env(stack.services["kafka"], CONSUMER)
    assert telerad(ledger, "audit", "ledger", "--create-key", "--idle-exit", "4").returncode == 0
    clean = telerad(env, "integrity", "verify", "--rate", "500")
    assert clean.returncode == 0, clean.stdout + clean.stderr[-2000:]
    assert answer(clean)["checked"] == on_pacs + 3

    with mock.patch.dict(os.environ, env), serve(Settings()) as live:
        # before: a link of ada's, every drill instance and the sample's own series read whole
        # (which also opens the link's decision windows: after the ransomware the PACS can no
        # longer answer the study search the policy's facts come from)
        reading = Reading.open(live, stack, rest, stored)
        untouched = next(iter(reading.series.keys() - reading.sop_uids(stored[:2])))
        assert reading.instance(untouched) == reading.frame(untouched) == "200 whole"
        assert reading.own_series() == "200 whole"
        altered = ransomware(rest, Path(str(orthanc.extra["storage"])), stored[:2])
        after(live, reading, altered, stack, env["TELERAD_KAFKA__AUDIT_TOPIC"])

    swept = telerad(env, "integrity", "verify", "--rate", "500")
    report = answer(swept)
    print(f"\nsweep: {report['checked']} instances in {report['seconds']} s")
    assert swept.returncode == 1
    assert {a["sop_uid"] for a in report["altered"]} == set(altered), report["altered"]
    assert report["missing"] == [] and report["never_recorded"] == []


def ransomware(rest: httpx.Client, storage: Path, victims: list[dict[str, Any]]) -> dict[str, str]:
    """Encrypt one file and flip a byte of another's pixel data, behind Orthanc's back."""
    altered = {}
    for instance, how in zip(victims, ("encrypt", "flip"), strict=True):
        info = rest.get(f"/instances/{instance['ID']}/attachments/dicom/info").json()
        uuid = info["Uuid"]
        path = storage / uuid[0:2] / uuid[2:4] / uuid
        data = path.read_bytes()
        if how == "encrypt":
            path.write_bytes(os.urandom(len(data)))
        else:
            # inside the pixel data (the sample's ends 138 bytes before the end of the file)
            path.write_bytes(data[:-300] + bytes([data[-300] ^ 0xFF]) + data[-299:])
        tags = rest.get(f"/instances/{instance['ID']}").json()["MainDicomTags"]
        altered[tags["SOPInstanceUID"]] = how
    return altered


AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


class Reading:
    """ada reading the sample study (with the drill's series) through one link."""

    def __init__(
        self, client: httpx.Client, root: str, link_id: str, series: dict[str, str], own: str
    ) -> None:
        self.client, self.root, self.link_id, self.series, self.own = (
            client,
            root,
            link_id,
            series,
            own,
        )
        self.pacs_ids: dict[str, str] = {}

    @classmethod
    def open(
        cls, live: LiveBroker, stack: Stack, rest: httpx.Client, stored: list[dict[str, Any]]
    ) -> Reading:
        wait_ready(live)
        bearer = {"Authorization": f"Bearer {token(stack, 'ada')}"}
        link = httpx.post(
            f"{live.url}/api/links",
            json={"study_uid": SAMPLE.study_uid, "operations": ["view", "download"]},
            headers=bearer,
            timeout=30,
        )
        assert link.status_code == 200, link.text
        series, pacs_ids = {}, {}
        for instance in stored:
            tags = rest.get(f"/instances/{instance['ID']}").json()["MainDicomTags"]
            parent = rest.get(f"/instances/{instance['ID']}/series").json()
            series[tags["SOPInstanceUID"]] = parent["MainDicomTags"]["SeriesInstanceUID"]
            pacs_ids[tags["SOPInstanceUID"]] = instance["ID"]
        study_id = next(
            x["ID"] for x in rest.post("/tools/lookup", content=SAMPLE.study_uid).json()
        )
        own = [
            s["MainDicomTags"]["SeriesInstanceUID"]
            for s in rest.get(f"/studies/{study_id}/series").json()
            if s["MainDicomTags"]["SeriesInstanceUID"] not in series.values()
        ]
        assert own, "the sample study's own series is on the PACS"
        client = httpx.Client(headers=bearer, timeout=30)
        reading = cls(client, link.json()["dicomweb_root"], link.json()["link_id"], series, own[0])
        reading.pacs_ids = pacs_ids
        return reading

    def sop_uids(self, instances: list[dict[str, Any]]) -> set[str]:
        ids = {i["ID"] for i in instances}
        return {sop for sop, pacs_id in self.pacs_ids.items() if pacs_id in ids}

    def _base(self, sop: str) -> str:
        return f"{self.root}/studies/{SAMPLE.study_uid}/series/{self.series[sop]}/instances/{sop}"

    def instance(self, sop: str) -> str:
        return read(self.client, self._base(sop), AS_STORED)

    def frame(self, sop: str) -> str:
        return read(self.client, f"{self._base(sop)}/frames/1", FRAMES_ACCEPT)

    def own_series(self) -> str:
        return read(
            self.client, f"{self.root}/studies/{SAMPLE.study_uid}/series/{self.own}", AS_STORED
        )

    def drill_series(self) -> str:
        series = next(iter(self.series.values()))
        url = f"{self.root}/studies/{SAMPLE.study_uid}/series/{series}"
        return read(self.client, url, AS_STORED)


def after(
    live: LiveBroker, reading: Reading, altered: dict[str, str], stack: Stack, audit_topic: str
) -> None:
    """Each altered instance's next read is cut off and alerted; the untouched ones read whole."""
    outcomes = {f"{sop} instance": reading.instance(sop) for sop in reading.series}
    outcomes |= {f"{sop} frame": reading.frame(sop) for sop in reading.series}
    outcomes["drill series"] = reading.drill_series()
    outcomes["own series"] = reading.own_series()
    print(f"\nreads through the link after the ransomware: {json.dumps(outcomes, indent=1)}")
    broken = ("502 integrity_violation", "broken")
    flipped = next(sop for sop, how in altered.items() if how == "flip")
    # a byte flipped in the pixel data: the file and the frame both fail their hashes
    assert outcomes[f"{flipped} instance"] in broken, outcomes
    assert outcomes[f"{flipped} frame"] in broken, outcomes
    assert outcomes["drill series"] in broken, outcomes
    # an encrypted file: never a whole answer (Orthanc may not even parse it: 502 bad_gateway)
    encrypted = next(sop for sop, how in altered.items() if how == "encrypt")
    assert outcomes[f"{encrypted} instance"] != "200 whole", outcomes
    assert outcomes[f"{encrypted} frame"] != "200 whole", outcomes
    for sop in set(reading.series) - set(altered):
        assert outcomes[f"{sop} instance"] == outcomes[f"{sop} frame"] == "200 whole", outcomes
    assert outcomes["own series"] == "200 whole", outcomes

    violations = events_of(audit_topic, stack, EventKind.INTEGRITY_VIOLATION)
    cut = {e.detail.get("sop_uid") for e in violations if e.detail.get("action") == "cut_off"}
    assert flipped in cut, violations
    assert cut <= set(altered), violations  # nothing untouched is named
    for event in violations:
        assert event.link_id == reading.link_id and event.subject == "npi:1000000001", event
    alerts: list[Alert] = []
    AlertDetector().handle(violations, alerts.append)
    assert {a.rule for a in alerts} == {"integrity_violation"}, alerts
    metrics = httpx.get(live.metrics_url, timeout=10).text
    assert 'telerad_integrity_violations_total{action="cut_off",finding="altered"}' in metrics


def read(client: httpx.Client, url: str, accept: str) -> str:
    """``200 whole``, ``502 <code>`` or ``broken`` (the body broke off) for one GET."""
    try:
        with client.stream("GET", url, headers={"Accept": accept}) as response:
            body = response.read()
            if response.status_code != 200:
                return f"{response.status_code} {json.loads(body).get('error', '')}".strip()
            expected = response.headers.get("content-length")
            if expected is not None and int(expected) != len(body):
                return "broken"
            return "200 whole"
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return "broken"


def wait_ready(live: LiveBroker) -> None:
    deadline = time.monotonic() + 60
    while True:
        ready = httpx.get(f"{live.url}/readyz", timeout=10)
        if ready.status_code == 200:
            assert "fingerprints" in ready.json()["checks"], ready.text
            return
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.5)


def events_of(topic: str, stack: Stack, kind: EventKind) -> list[AuditEvent]:
    consumer = KafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        consumer_timeout_ms=8000,
        **client_kwargs(stack.services["kafka"], CONSUMER),
    )
    try:
        found = [from_record(r.value, r.headers) for r in consumer]
    finally:
        consumer.close()
    return [e for e in found if e.kind is kind]
