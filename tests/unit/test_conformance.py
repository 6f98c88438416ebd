"""Schemathesis' conformance checks, run against the app in-process (its dependencies faked).

Every operation in the OpenAPI document gets generated requests (from its schemas and
examples), anonymous and with a valid bearer token, and each answer is checked: no 500, the
status and the media type are declared for that operation, the body and headers are as
declared, and a method the document does not list is a 405 with ``Allow``. The examples are
bounded (25 per operation and mode) so the whole run stays within seconds.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.unit.fake_broker import fake_broker

BROKER = fake_broker()
schema = schemathesis.openapi.from_asgi("/openapi.json", BROKER.asgi)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    unsupported_method,
]
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@schema.parametrize()
@EXAMPLES
def test_anonymous_requests_conform(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


@schema.parametrize()
@EXAMPLES
def test_authenticated_requests_conform(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=BROKER.bearer(), checks=CHECKS)
