"""A ransomware drill against the real stack: fingerprints at ingest, files altered behind the
PACS's back, and a sweep that names exactly those instances."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.kafka_cluster import CONSUMER, kafka_env
from devstack.services import orthanc_client
from devstack.stack import Stack
from tests.integration.test_audit_stream import topics

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


def drill_instances(n: int) -> list[bytes]:
    """``n`` new CT instances of one new study (pydicom's test data, synthetic UIDs)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
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
    }
    on_pacs = len(rest.get("/instances").json())

    # first start: what the PACS holds is fingerprinted (backfill)
    first = answer(telerad(env, "integrity", "watch", "--idle-exit", "2"))
    assert first == {"backfilled": on_pacs, "recorded": 0}, first

    # new instances arrive: the change feed brings them, once
    stored = [rest.post("/instances", content=blob).json() for blob in drill_instances(3)]
    try:
        drill(env, kafka_env(stack.services["kafka"], CONSUMER), rest, orthanc, stored, on_pacs)
    finally:  # the stack is shared: the drill's study goes, altered files and all
        for instance in stored:
            rest.delete(f"/instances/{instance['ID']}")


def drill(
    env: dict[str, str],
    consumer_env: dict[str, str],
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
    ledger = env | consumer_env
    assert telerad(ledger, "audit", "ledger", "--create-key", "--idle-exit", "4").returncode == 0
    clean = telerad(env, "integrity", "verify", "--rate", "500")
    assert clean.returncode == 0, clean.stdout + clean.stderr[-2000:]
    assert answer(clean)["checked"] == on_pacs + 3

    # ransomware: two files encrypted / altered on disk behind Orthanc's back
    storage = Path(str(orthanc.extra["storage"]))
    altered = {}
    for instance, how in zip(stored[:2], ("encrypt", "flip"), strict=True):
        info = rest.get(f"/instances/{instance['ID']}/attachments/dicom/info").json()
        uuid = info["Uuid"]
        path = storage / uuid[0:2] / uuid[2:4] / uuid
        data = path.read_bytes()
        if how == "encrypt":
            path.write_bytes(os.urandom(len(data)))
        else:
            path.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
        tags = rest.get(f"/instances/{instance['ID']}").json()["MainDicomTags"]
        altered[tags["SOPInstanceUID"]] = how

    swept = telerad(env, "integrity", "verify", "--rate", "500")
    report = answer(swept)
    print(f"\nsweep: {report['checked']} instances in {report['seconds']} s")
    assert swept.returncode == 1
    assert {a["sop_uid"] for a in report["altered"]} == set(altered), report["altered"]
    assert report["missing"] == [] and report["never_recorded"] == []
