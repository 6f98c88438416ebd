"""Sample studies for the dev/test PACS, built from pydicom's bundled test files."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack._procs import progress
from devstack.services import Service, orthanc_client

__all__ = [
    "SampleStudy",
    "build_instances",
    "load_samples",
    "publish_sample_worklist",
    "sample_studies",
    "sample_worklist",
]

_UID_ROOT = "1.2.826.0.1.3680043.10.1119."  # a root for synthetic test UIDs; never real patients


@dataclass(frozen=True)
class SampleStudy:
    """One sample study and the facts the hospital would hold about it."""

    key: str
    study_uid: str
    facility: str
    labels: tuple[str, ...]
    consent: str
    referring_physician: str | None
    raw: dict[str, Any]


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=_UID_ROOT, entropy_srcs=list(parts)))


def sample_studies() -> list[SampleStudy]:
    """The catalog of sample studies, with their deterministic Study Instance UIDs."""
    catalog = json.loads((Path(__file__).parent / "resources" / "studies.json").read_text())
    return [
        SampleStudy(
            key=s["key"],
            study_uid=_uid("study", s["key"]),
            facility=s["facility"],
            labels=tuple(s["labels"]),
            consent=s["consent"],
            referring_physician=s["referring_physician"],
            raw=s,
        )
        for s in catalog["studies"]
    ]


def build_instances(study: SampleStudy) -> list[bytes]:
    """The study's DICOM instances (Part 10 bytes), relabelled with synthetic identifiers."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import UID

    source = get_testdata_file(study.raw["source"])
    if source is None:
        raise FileNotFoundError(f"pydicom test file {study.raw['source']} is not bundled")
    series_uid = _uid("series", study.key)
    out: list[bytes] = []
    for index in range(int(study.raw["instances"])):
        ds = pydicom.dcmread(source)
        sop_uid = _uid("instance", study.key, str(index))
        ds.StudyInstanceUID = study.study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.InstanceNumber = index + 1
        ds.PatientID = study.raw["patient_id"]
        ds.PatientName = study.raw["patient_name"]
        ds.InstitutionName = study.raw["institution"]
        ds.AccessionNumber = study.key[:16]
        ds.StudyDescription = study.key
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def load_samples(orthanc: Service) -> list[SampleStudy]:
    """Store every sample study in Orthanc through its REST API (idempotent)."""
    studies = sample_studies()
    with orthanc_client(orthanc, timeout=30) as client:
        for study in studies:
            for blob in build_instances(study):
                response = client.post("/instances", content=blob)
                response.raise_for_status()
    progress(f"orthanc: {len(studies)} sample studies loaded")
    return studies


def sample_worklist() -> list[Any]:
    """The RIS's assignments of the sample studies (``readers`` in studies.json), as events."""
    from broker.worklist.events import WorklistEvent, WorklistKind

    return [
        WorklistEvent(
            kind=WorklistKind.ASSIGNED,
            study_uid=s.study_uid,
            accession_number=f"ACC-{i:04d}",
            facility=s.facility,
            readers=list(s.raw["readers"]),
            reader=s.raw["readers"][0],
            assigning_system="ris-dev",
        )
        for i, s in enumerate(sample_studies(), start=1)
        if s.raw.get("readers")
    ]


def publish_sample_worklist(kafka: Service, topic: str = "telerad.worklist.v1") -> int:
    """Publish :func:`sample_worklist` to ``topic`` as the RIS's principal (idempotent: the
    topic is compacted by study, so a second run leaves the same state)."""
    from broker.worklist.publish import publish
    from devstack.kafka_cluster import RIS, security_kwargs

    written = publish(
        sample_worklist(),
        bootstrap=kafka.endpoints["bootstrap"],
        topic=topic,
        source="/ris/ris-dev",
        client_config=security_kwargs(kafka, RIS),
    )
    progress(f"worklist: {written} sample assignments published to {topic}")
    return written
