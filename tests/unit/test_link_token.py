"""Properties of the link token codec (hypothesis)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.crypto import KeyRing
from broker.links.token import LinkClaims, LinkCodec, LinkInvalid

KEY_A, KEY_B = os.urandom(32), os.urandom(32)

uids = st.from_regex(r"[1-9][0-9]{0,5}(\.[1-9][0-9]{0,8}){1,6}", fullmatch=True)


def _claims(**fields: object) -> LinkClaims:
    return LinkClaims.model_validate(fields, by_name=True)


claims = st.builds(
    _claims,
    subject=st.text(min_size=1, max_size=40),
    issuer=st.text(min_size=1, max_size=80),
    study_uid=uids,
    operations=st.sampled_from([("view",), ("download", "view")]),
    expires_at=st.integers(0, 2**40),
    issued_at=st.integers(0, 2**40),
    decision_id=st.none() | st.uuids().map(str),
    binding=st.sampled_from(["sid", "sub", "jkt"]).flatmap(
        lambda k: st.text(min_size=1, max_size=40).map(lambda v: {k: v})
    ),
)


def codec(active: str = "a", **keys: bytes) -> LinkCodec:
    return LinkCodec(KeyRing(keys or {"a": KEY_A}, active))


@given(claims)
def test_round_trip(c: LinkClaims) -> None:
    assert codec().open(codec().seal(c)) == c


@given(claims, st.data())
@settings(max_examples=200)
def test_any_change_fails_to_open(c: LinkClaims, data: st.DataObject) -> None:
    token = codec().seal(c)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(token) - 1))
        replacement = data.draw(st.sampled_from("AQgw_-.x0").filter(lambda ch: ch != token[i]))
        changed = token[:i] + replacement + token[i + 1 :]
    elif kind == "truncate":
        changed = token[: data.draw(st.integers(0, len(token) - 1))]
    else:
        changed = token + data.draw(st.text("ABCabc012_-.", min_size=1, max_size=8))
    with pytest.raises(LinkInvalid):
        codec().open(changed)


@given(claims)
def test_retired_key_still_opens_removed_key_does_not(c: LinkClaims) -> None:
    old_token = codec("a", a=KEY_A).seal(c)
    rotated = codec("b", a=KEY_A, b=KEY_B)  # b seals now; a is kept for opening
    assert rotated.open(old_token) == c
    assert rotated.seal(c).startswith("v1.b.")
    with pytest.raises(LinkInvalid):
        codec("b", b=KEY_B).open(old_token)


@given(st.text(max_size=600))
def test_garbage_never_opens(text: str) -> None:
    with pytest.raises(LinkInvalid):
        codec().open(text)


def test_session_tokens_do_not_open_as_links() -> None:
    ring = KeyRing({"a": KEY_A}, "a")
    sealed = ring.seal(b'{"s":"x"}', purpose="session")
    with pytest.raises(LinkInvalid):
        LinkCodec(ring).open(sealed)
