"""Property-based fuzzing of the parsers that take attacker input: tokens, links, DICOMweb paths.

Whatever the input, each either accepts it or refuses it with its own error type — never another
exception (which would become a 500).
"""

from __future__ import annotations

import asyncio
import string

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.config import IdentitySettings, IssuerSettings
from broker.dicomweb.facts import valid_uid
from broker.dicomweb.proxy import parse_path
from broker.errors import NotFound
from broker.identity.bearer import BearerValidator, TokenRejected

STUDY = "1.2.826.0.1.3680043.10.1119.1"
segments = st.one_of(
    st.sampled_from(
        [
            "studies",
            STUDY,
            "series",
            "instances",
            "metadata",
            "frames",
            "rendered",
            "thumbnail",
            "..",
            ".",
            "",
            "%2F",
            "1.2.3",
            "1,2",
            "0",
            "bulkdata",
        ]
    ),
    st.text(alphabet=string.printable, max_size=12),
)


@given(st.lists(segments, max_size=9))
@settings(max_examples=500)
def test_parse_path_accepts_only_paths_below_the_study(parts: list[str]) -> None:
    path = "/".join(parts)
    try:
        parsed = parse_path(path, STUDY)
    except NotFound:
        return
    # below the study, or the study search (whose query the proxy pins to the linked study)
    assert parsed.upstream.startswith(f"studies/{STUDY}") or (
        parsed.study_search and parsed.upstream == "studies"
    )
    assert ".." not in parsed.upstream.split("/")
    assert all(part and "%" not in part and "\\" not in part for part in parsed.upstream.split("/"))
    assert parsed.operation in ("view", "download")


@given(st.text(max_size=80))
def test_valid_uid_never_raises(text: str) -> None:
    assert valid_uid(text) in (True, False)


def _validator() -> BearerValidator:
    def no_network(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    http = httpx.AsyncClient(transport=httpx.MockTransport(no_network))
    return BearerValidator(
        IdentitySettings(), [IssuerSettings(issuer="https://idp.test/realms/a")], http
    )


token_parts = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "-_=+/", max_size=60),
    st.sampled_from(["eyJhbGciOiJub25lIn0", "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ", "e30", ""]),
)


@given(
    st.one_of(st.text(max_size=300), st.lists(token_parts, min_size=1, max_size=5).map(".".join))
)
@settings(max_examples=400)
def test_bearer_validation_only_ever_rejects_garbage(token: str) -> None:
    async def check() -> None:
        try:
            await _validator().validate(token)
        except TokenRejected:
            return
        raise AssertionError("garbage was accepted")

    asyncio.run(check())
