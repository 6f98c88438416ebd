"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and verifiers (known vectors + hypothesis)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    split_point,
    subtree_from_nodes,
    verify_consistency,
    verify_inclusion,
)

# --- Known-answer vectors ----------------------------------------------------------------------
# Source: github.com/transparency-dev/merkle (the Merkle library split out of Trillian),
# testonly/constants.go (LeafInputs, NodeHashes, RootHashes) and proof/verify_test.go
# (inclusionProofs, consistencyProofs; there leaf numbers are 1-based, here indexes are 0-based).
# Every value below was checked against this implementation before being written down.

CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

CT_ROOTS = [  # MTH of the first n leaves, n = 0..8
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

CT_NODES = [  # complete subtrees of the 8-leaf tree: CT_NODES[level][idx]
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]

CT_INCLUSION = [  # (index, size, path)
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

CT_CONSISTENCY = [  # (old_size, new_size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

CT_HASHES = [leaf_hash(d) for d in CT_LEAVES]


def ct_subtree(start: int, end: int) -> bytes:
    return root(CT_HASHES[start:end])


def unhex(values: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert root([]) == EMPTY_ROOT


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_known_roots(size: int) -> None:
    assert root(CT_HASHES[:size]).hex() == CT_ROOTS[size]


def test_known_complete_subtree_hashes() -> None:
    for level, hashes in enumerate(CT_NODES):
        for idx, expected in enumerate(hashes):
            start = idx << level
            assert ct_subtree(start, start + (1 << level)).hex() == expected
            assert (
                subtree_from_nodes(
                    start, start + (1 << level), lambda lv, i: bytes.fromhex(CT_NODES[lv][i])
                ).hex()
                == expected
            )


def test_leaf_and_node_prefixes() -> None:
    # A one-leaf tree's root is the leaf hash; a two-leaf root is the 0x01 node hash.
    assert leaf_hash(b"").hex() == CT_ROOTS[1]
    assert node_hash(CT_HASHES[0], CT_HASHES[1]).hex() == CT_ROOTS[2]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_known_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    proof = inclusion_proof(index, size, ct_subtree)
    assert [p.hex() for p in proof] == path
    assert verify_inclusion(CT_HASHES[index], index, size, proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_known_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    proof = consistency_proof(old, new, ct_subtree)
    assert [p.hex() for p in proof] == path
    old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
    assert verify_consistency(old, new, old_root, new_root, unhex(path))


def test_split_point_is_the_largest_power_of_two_below() -> None:
    # Not the midpoint: the difference is silent and only the RFC's split interoperates.
    for n, k in {2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 8: 4, 9: 8, 1000: 512}.items():
        assert split_point(n) == k
    with pytest.raises(ValueError):
        split_point(1)


# --- An independent, literal transcription of the RFC 6962 recursions (test oracle) -----------


def ref_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return d[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = split_point(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = split_point(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def path_shape(m: int, n: int) -> tuple[bool, ...]:
    """Which side each PATH element sits on: equal shapes mean identical verifier arithmetic."""
    if n == 1:
        return ()
    k = split_point(n)
    return (*path_shape(m, k), True) if m < k else (*path_shape(m - k, n - k), False)


def proof_shape(m: int, n: int, b: bool = True) -> tuple[object, ...]:
    """The SUBPROOF recursion's shape, including whether old_root is used as the seed."""
    if m == n:
        return ("seed-is-old-root" if b else "seed-in-proof",)
    k = split_point(n)
    if m <= k:
        return (*proof_shape(m, k, b), "right")
    return (*proof_shape(m - k, n - k, False), "left")


MAX = 300
LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX)]
ROOTS = [root(LEAVES[:n]) for n in range(MAX + 1)]


def subtree(start: int, end: int) -> bytes:
    return root(LEAVES[start:end])


def flipped(proof: list[bytes], i: int, j: int, mask: int = 0x01) -> list[bytes]:
    element = bytearray(proof[i])
    element[j] ^= mask
    return [*proof[:i], bytes(element), *proof[i + 1 :]]


def test_root_matches_the_literal_recursion() -> None:
    for n in range(70):
        assert root(LEAVES[:n]) == ref_mth(LEAVES[:n])


def test_every_proof_for_small_trees_matches_the_rfc_and_verifies() -> None:
    for n in range(1, 65):
        for m in range(n):
            proof = inclusion_proof(m, n, subtree)
            assert proof == ref_path(m, LEAVES[:n])
            assert verify_inclusion(LEAVES[m], m, n, proof, ROOTS[n])
        for old in range(1, n + 1):
            proof = consistency_proof(old, n, subtree)
            assert proof == (ref_subproof(old, LEAVES[:n], True) if old < n else [])
            assert verify_consistency(old, n, ROOTS[old], ROOTS[n], proof)


sizes_and_index = st.integers(1, MAX).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n - 1))
)
old_and_new = st.integers(0, MAX).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@settings(max_examples=300, deadline=None)
@given(sizes_and_index, st.integers(1, 255))
def test_inclusion_proofs_verify_and_every_corruption_fails(ni: tuple[int, int], mask: int) -> None:
    n, i = ni
    proof = inclusion_proof(i, n, subtree)
    assert proof == ref_path(i, LEAVES[:n])
    assert verify_inclusion(LEAVES[i], i, n, proof, ROOTS[n])

    # Any byte of any element changed: rejected.
    for k in range(len(proof)):
        for j in range(32):
            assert not verify_inclusion(LEAVES[i], i, n, flipped(proof, k, j, mask), ROOTS[n])
    # Wrong leaf, wrong root, other trees' roots.
    assert not verify_inclusion(LEAVES[(i + 1) % MAX], i, n, proof, ROOTS[n])
    assert not verify_inclusion(LEAVES[i], i, n, proof, flipped([ROOTS[n]], 0, 31, mask)[0])
    assert not verify_inclusion(LEAVES[i], i, n, proof, ROOTS[n - 1])
    assert not verify_inclusion(LEAVES[i], i, n, proof, EMPTY_ROOT)
    # Elements removed, added, duplicated or reordered: rejected.
    if proof:
        assert not verify_inclusion(LEAVES[i], i, n, proof[:-1], ROOTS[n])
        assert not verify_inclusion(LEAVES[i], i, n, proof[1:], ROOTS[n])
    assert not verify_inclusion(LEAVES[i], i, n, [*proof, ROOTS[n]], ROOTS[n])
    assert not verify_inclusion(LEAVES[i], i, n, [ROOTS[n], *proof], ROOTS[n])
    if len(proof) > 1 and proof[0] != proof[1]:
        assert not verify_inclusion(LEAVES[i], i, n, [proof[1], proof[0], *proof[2:]], ROOTS[n])
    # Out-of-range index / size: rejected, not raised.
    assert not verify_inclusion(LEAVES[i], n, n, proof, ROOTS[n])
    assert not verify_inclusion(LEAVES[i], i, i, proof, ROOTS[n])
    assert not verify_inclusion(LEAVES[i], -1, n, proof, ROOTS[n])
    # Wrong index or size. The proof does not bind the size by itself: another (index, size)
    # whose audit path has the same shape runs the same arithmetic (e.g. (0, 5) and (0, 6)),
    # which is why a signed head signs the size with the root. Every other one must fail.
    for i2, n2 in {
        (i - 1, n),
        (i + 1, n),
        (i ^ 2, n),
        (i, n + 1),
        (i, n - 1),
        (i, 2 * n),
        (i, n // 2),
    }:
        if 0 <= i2 < n2 and path_shape(i2, n2) == path_shape(i, n):
            continue
        assert not verify_inclusion(LEAVES[i], i2, n2, proof, ROOTS[n])


@settings(max_examples=300, deadline=None)
@given(old_and_new, st.integers(1, 255))
def test_consistency_proofs_verify_and_every_corruption_fails(
    on: tuple[int, int], mask: int
) -> None:
    old, new = on
    proof = consistency_proof(old, new, subtree)
    assert verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)
    if old in (0, new):
        assert proof == []
        if old < new:  # from the empty tree: only the empty root is a valid old root
            assert not verify_consistency(0, new, ROOTS[new], ROOTS[new], [])
        else:
            assert not verify_consistency(old, new, ROOTS[old], flipped([ROOTS[new]], 0, 0)[0], [])
            assert not verify_consistency(old, new, ROOTS[old], ROOTS[new], [EMPTY_ROOT])
        return
    assert proof == ref_subproof(old, LEAVES[:new], True)

    for k in range(len(proof)):
        for j in range(32):
            assert not verify_consistency(
                old, new, ROOTS[old], ROOTS[new], flipped(proof, k, j, mask)
            )
    # Wrong roots.
    assert not verify_consistency(old, new, ROOTS[old - 1], ROOTS[new], proof)
    assert not verify_consistency(old, new, ROOTS[old], ROOTS[new - 1], proof)
    assert not verify_consistency(old, new, ROOTS[new], ROOTS[old], proof)
    assert not verify_consistency(old, new, flipped([ROOTS[old]], 0, 5, mask)[0], ROOTS[new], proof)
    # Truncated, extended, emptied, prefixed.
    assert not verify_consistency(old, new, ROOTS[old], ROOTS[new], [])
    assert not verify_consistency(old, new, ROOTS[old], ROOTS[new], proof[:-1])
    assert not verify_consistency(old, new, ROOTS[old], ROOTS[new], [*proof, ROOTS[new]])
    assert not verify_consistency(old, new, ROOTS[old], ROOTS[new], [ROOTS[old], *proof])
    assert not verify_consistency(old, new, ROOTS[old], ROOTS[new], [proof[0], *proof])
    # Time travel and impossible sizes.
    assert not verify_consistency(new, old, ROOTS[new], ROOTS[old], proof)
    assert not verify_consistency(-old, new, ROOTS[old], ROOTS[new], proof)
    # Wrong sizes: rejected unless the proof has the very same shape (see the inclusion test).
    for o2, n2 in {(old - 1, new), (old + 1, new), (old ^ 2, new), (old, new + 1), (old, 2 * new)}:
        if 0 < o2 < n2 and proof_shape(o2, n2) == proof_shape(old, new):
            continue
        assert not verify_consistency(o2, n2, ROOTS[old], ROOTS[new], proof)


def test_a_proof_does_not_bind_the_size_alone() -> None:
    # Documented limitation shared by every RFC 6962 verifier: PATH(0, D[5]) and PATH(0, D[6])
    # have the same shape, so size 6 "verifies" against the size-5 root. Heads sign the size.
    proof5 = inclusion_proof(0, 5, subtree)
    assert path_shape(0, 5) == path_shape(0, 6)
    assert verify_inclusion(LEAVES[0], 0, 6, proof5, ROOTS[5])
    assert not verify_inclusion(LEAVES[0], 0, 6, proof5, ROOTS[6])


@given(
    st.integers(0, MAX).flatmap(
        lambda n: st.tuples(st.integers(0, n), st.just(n)).flatmap(
            lambda se: st.tuples(st.just(se[0]), st.integers(se[0], se[1]))
        )
    )
)
def test_subtree_from_nodes_answers_any_range(start_end: tuple[int, int]) -> None:
    start, end = start_end

    def node(level: int, idx: int) -> bytes:
        first = idx << level
        assert first + (1 << level) <= MAX
        return root(LEAVES[first : first + (1 << level)])

    assert subtree_from_nodes(start, end, node) == ref_mth(LEAVES[start:end])


def test_generators_reject_bad_arguments() -> None:
    for index, size in [(0, 0), (3, 3), (-1, 3), (4, 3)]:
        with pytest.raises(ValueError):
            inclusion_proof(index, size, subtree)
    for old, new in [(3, 2), (-1, 2)]:
        with pytest.raises(ValueError):
            consistency_proof(old, new, subtree)
    with pytest.raises(ValueError):
        subtree_from_nodes(3, 2, lambda level, idx: b"")


junk = st.one_of(
    st.integers(-(2**70), 2**70),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.binary(max_size=40),
    st.floats(allow_nan=True),
)
junk_hash = st.one_of(st.binary(min_size=0, max_size=40), st.sampled_from(ROOTS[:5]), junk)
junk_proof = st.one_of(st.lists(junk_hash, max_size=12), junk)


@settings(max_examples=500)
@given(junk_hash, junk, junk, junk_proof, junk_hash)
def test_verify_inclusion_never_raises(
    leaf: object, index: object, size: object, proof: object, root_: object
) -> None:
    result = verify_inclusion(leaf, index, size, proof, root_)  # type: ignore[arg-type]
    assert result is False or result is True


@settings(max_examples=500)
@given(junk, junk, junk_hash, junk_hash, junk_proof)
def test_verify_consistency_never_raises(
    old: object, new: object, old_root: object, new_root: object, proof: object
) -> None:
    result = verify_consistency(old, new, old_root, new_root, proof)  # type: ignore[arg-type]
    assert result is False or result is True


@given(st.integers(0, 2**64), st.lists(st.binary(min_size=32, max_size=32), max_size=70))
def test_huge_sizes_with_random_proofs_are_rejected_quickly(size: int, proof: list[bytes]) -> None:
    assert not verify_inclusion(LEAVES[0], 0, size, proof, ROOTS[1]) or (size, proof) == (1, [])
    assert not verify_consistency(1, size, ROOTS[1], ROOTS[2], proof) or (
        size == 2 and proof == [LEAVES[1]]
    )
