"""DPoP proof verification (RFC 9449 §4.3)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from broker.identity.bearer import TokenRejected
from broker.identity.dpop import DpopVerifier
from tests.dpop_client import DpopClient

URL = "https://broker.test/links/abc/dicom-web/studies/1.2.3"


def test_valid_proof_gives_the_thumbprint() -> None:
    client = DpopClient()
    assert (
        DpopVerifier().verify(client.proof("GET", URL), method="GET", url=URL) == client.thumbprint
    )


def test_query_is_ignored_in_htu() -> None:
    client = DpopClient()
    assert DpopVerifier().verify(client.proof("GET", URL + "?x=1"), method="GET", url=URL)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda c: c.proof("POST", URL), "dpop_wrong_request"),
        (lambda c: c.proof("GET", URL + "/metadata"), "dpop_wrong_request"),
        (lambda c: c.proof("GET", URL, iat=time.time() - 600), "dpop_stale"),
        (lambda c: "x.y", "dpop_malformed"),
        (lambda c: c.proof("GET", URL)[:-4], "dpop_signature"),
    ],
)
def test_bad_proofs(make: object, reason: str) -> None:
    client = DpopClient()
    with pytest.raises(TokenRejected) as err:
        DpopVerifier().verify(make(client), method="GET", url=URL)  # type: ignore[operator]
    assert err.value.reason == reason


def test_replayed_jti_is_refused() -> None:
    client, verifier = DpopClient(), DpopVerifier()
    proof = client.proof("GET", URL, jti="once")
    verifier.verify(proof, method="GET", url=URL)
    with pytest.raises(TokenRejected) as err:
        verifier.verify(proof, method="GET", url=URL)
    assert err.value.reason == "dpop_replayed"


def test_private_key_in_header_is_refused() -> None:
    client = DpopClient()
    proof = client.proof("GET", URL)
    head, body, sig = proof.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    header["jwk"] = client.key.as_dict(private=True)
    forged = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenRejected) as err:
        DpopVerifier().verify(f"{forged}.{body}.{sig}", method="GET", url=URL)
    assert err.value.reason == "dpop_private_key"
