"""The OpenAPI document against the real stack: Keycloak's tokens, OPA's policy, Orthanc's answers.

Schemathesis loads the live broker's /openapi.json and (1) runs generated requests for every
operation with a real token, and (2) checks what redemption answers for what OHIF asks (the
PACS's own media types: DICOM JSON, multipart frames, rendered images) and its refusals. The
unit-level run over fakes is tests/unit/test_conformance.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devstack.stack import Stack
from tests.integration.conftest import LiveBroker
from tests.integration.test_links import token
from tests.integration.test_proxy_ohif import FRAMES_ACCEPT, LINKED, Link

pytestmark = pytest.mark.integration

REDEEM = "/links/{token}/dicom-web/{path}"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def api(live_broker: LiveBroker) -> Iterator[schemathesis.BaseSchema]:
    yield schemathesis.openapi.from_url(f"{live_broker.url}/openapi.json")


@pytest.fixture
def ada(stack: Stack) -> str:
    return token(stack, "ada")


def test_generated_requests_conform(api: schemathesis.BaseSchema, ada: str) -> None:
    # The schema comes from the live broker, so each operation's strategy is run here (not
    # through schemathesis.pytest.from_fixture, which fails under this pytest).
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 12  # the POST sign-out included
    sent: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=10,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {ada}"}, checks=CHECKS)
            sent.append(case.operation.label)

        conforms()
    assert set(sent) == {operation.label for operation in operations}


def test_what_ohif_asks_conforms(
    api: schemathesis.BaseSchema, live_broker: LiveBroker, stack: Stack
) -> None:
    link = Link(live_broker, stack)
    series = link.first_series()
    instance = f"series/{series}/instances/{link.first_instance(series)}"
    link_token = urlsplit(link.root).path.split("/")[2]
    asked = [
        ("studies", {"StudyInstanceUID": LINKED.study_uid}, "application/dicom+json"),
        (f"studies/{LINKED.study_uid}/series", None, "application/dicom+json"),
        (f"studies/{LINKED.study_uid}/{instance}/metadata", None, "application/dicom+json"),
        (f"studies/{LINKED.study_uid}/{instance}/frames/1", None, FRAMES_ACCEPT),
        (f"studies/{LINKED.study_uid}/{instance}/rendered", None, "image/jpeg"),
        (f"studies/{LINKED.study_uid}/{instance}/thumbnail", None, "image/jpeg"),
        (f"studies/{LINKED.study_uid}", None, "application/dicom+json"),  # view-only: 403
        ("studies/1.2.3/series", None, "application/dicom+json"),  # not the linked study: 404
    ]
    operation = api[REDEEM]["GET"]
    for path, params, accept in asked:
        response = httpx.get(
            f"{link.root}/{path}",
            params=params,
            headers={"Accept": accept, "Authorization": f"Bearer {link.bearer}"},
            timeout=30,
        )
        case = operation.Case(path_parameters={"token": link_token, "path": path})
        case.validate_response(response, checks=CHECKS)
