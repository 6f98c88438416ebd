"""Merkle Tree Hash, audit paths and consistency proofs of RFC 6962 / RFC 9162, with SHA-256.

Pure functions, no I/O. Proof *generation* takes a ``get_subtree(start, end)`` callback that
returns MTH(D[start:end]) so that a store can answer it from cached complete subtrees; the
proof *verifiers* need nothing but the hashes and sizes, and return ``False`` (never raise) on
any malformed input.

Definitions (RFC 6962 §2.1, identical in RFC 9162 §2.1.1)::

    MTH({})       = SHA-256()
    MTH({d(0)})   = SHA-256(0x00 || d(0))
    MTH(D[n])     = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))
                    where k is the largest power of two smaller than n (n > 1)
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "SubtreeGetter",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "split_point",
    "subtree_from_nodes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

# "The hash of an empty list is the hash of an empty string: MTH({}) = SHA-256()."
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""MTH of the empty tree: SHA-256 of the empty string (e3b0c442...b855)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

SubtreeGetter = Callable[[int, int], bytes]
"""``get_subtree(start, end)`` -> MTH of the leaves ``[start, end)``."""


def leaf_hash(data: bytes) -> bytes:
    """Return the leaf hash of one entry.

    RFC 6962 §2.1: "The hash of a list with one entry ... MTH({d(0)}) = SHA-256(0x00 || d(0))."
    """
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the hash of an interior node from its two children.

    RFC 6962 §2.1: "MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))".
    """
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """Return k, "the largest power of two smaller than n" (RFC 6962 §2.1), for n > 1."""
    if n < 2:
        raise ValueError(f"split_point needs n > 1, got {n}")
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return MTH over already-hashed leaves (``leaf_hash(d)`` for each entry d), in O(n).

    Folds the leaves left to right into a stack of complete subtrees (sizes strictly
    decreasing, one per set bit of n), then combines that stack right to left, which is
    exactly the RFC 6962 split at the largest power of two smaller than n.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    stack: list[bytes] = []  # hashes of complete subtrees, largest first
    for count, h in enumerate(leaf_hashes):
        # `count` leaves precede this one: each trailing 1-bit of count is a complete
        # subtree on the stack that now has a right sibling of the same size.
        while count & 1:
            h = node_hash(stack.pop(), h)
            count >>= 1
        stack.append(h)
    acc = stack.pop()
    while stack:
        acc = node_hash(stack.pop(), acc)
    return acc


def subtree_from_nodes(start: int, end: int, get_node: Callable[[int, int], bytes]) -> bytes:
    """Return MTH(D[start:end]) from stored complete subtrees.

    ``get_node(level, idx)`` must return the hash of the complete, aligned subtree of
    2**level leaves starting at leaf ``idx * 2**level`` (level 0 = leaf hashes). Ranges that
    occur in the RFC 6962 recursion (the root of any prefix, every proof element) need at
    most O(log n) calls; an unaligned range is still answered correctly, only with more calls.
    """
    if start < 0 or end < start:
        raise ValueError(f"bad subtree range [{start}, {end})")
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        return get_node(level, start >> level)
    k = split_point(n)
    return node_hash(
        subtree_from_nodes(start, start + k, get_node),
        subtree_from_nodes(start + k, end, get_node),
    )


def inclusion_proof(index: int, size: int, get_subtree: SubtreeGetter) -> list[bytes]:
    """Return the audit path PATH(index, D[size]) of RFC 6962 §2.1.1, leaf-level sibling first.

    RFC 6962 §2.1.1::

        PATH(0, {d(0)}) = {}
        PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])       for m < k
        PATH(m, D[n]) = PATH(m - k, D[k:n]) : MTH(D[0:k])   for m >= k

    Raises ValueError unless 0 <= index < size.
    """
    if not 0 <= index < size:
        raise ValueError(f"inclusion proof needs 0 <= index < size, got {index}, {size}")
    siblings: list[bytes] = []  # collected root-side first; the RFC lists them leaf-side first
    start, end, m = 0, size, index
    while end - start > 1:
        k = split_point(end - start)
        if m < k:
            siblings.append(get_subtree(start + k, end))  # ... : MTH(D[k:n])
            end = start + k
        else:
            siblings.append(get_subtree(start, start + k))  # ... : MTH(D[0:k])
            start, m = start + k, m - k
    siblings.reverse()
    return siblings


def consistency_proof(old_size: int, new_size: int, get_subtree: SubtreeGetter) -> list[bytes]:
    """Return PROOF(old_size, D[new_size]) of RFC 6962 §2.1.2, deepest node first.

    RFC 6962 §2.1.2: "PROOF(m, D[n]) = SUBPROOF(m, D[n], true)" with::

        SUBPROOF(m, D[m], true) = {}
        SUBPROOF(m, D[m], false) = {MTH(D[m])}
        SUBPROOF(m, D[n], b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])          for m <= k
        SUBPROOF(m, D[n], b) = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])  for m > k

    The proof is empty when old_size is 0 or equals new_size (nothing to prove). Raises
    ValueError unless 0 <= old_size <= new_size.
    """
    if not 0 <= old_size <= new_size:
        raise ValueError(
            f"consistency proof needs 0 <= old_size <= new_size, got {old_size}, {new_size}"
        )
    if old_size in (0, new_size):
        return []
    siblings: list[bytes] = []  # root-side first
    start, end, m, b = 0, new_size, old_size, True
    while m != end - start:  # until we reach SUBPROOF(m, D[m], b)
        k = split_point(end - start)
        if m <= k:
            siblings.append(get_subtree(start + k, end))
            end = start + k
        else:
            siblings.append(get_subtree(start, start + k))
            start, m, b = start + k, m - k, False
    siblings.reverse()
    if not b:
        # SUBPROOF(m, D[m], false) = {MTH(D[m])}: the innermost element, so it comes first.
        siblings.insert(0, get_subtree(start, end))
    return siblings


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _proof_ok(proof: object) -> bool:
    return isinstance(proof, Sequence) and all(_is_hash(p) for p in proof)


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check an audit path with the algorithm of RFC 9162 §2.1.3.2; never raises.

    ``leaf_hash`` is the hashed leaf (``leaf_hash(data)``). Returns False on any malformed
    input: index >= size, hashes that are not 32 bytes, a proof of the wrong length, ...
    """
    if not (_is_hash(leaf_hash) and _is_hash(root) and _is_size(index) and _is_size(size)):
        return False
    if not _proof_ok(proof):
        return False
    # 1. "Compare leaf_index from the inclusion_proof_v2 structure against tree_size. If
    #    leaf_index is greater than or equal to tree_size, then fail the proof verification."
    if index >= size:
        return False
    # 2. "Set fn to leaf_index and sn to tree_size - 1."
    fn, sn = index, size - 1
    # 3. "Set r to hash."
    r = bytes(leaf_hash)
    # 4. "For each value p in the inclusion_path array:"
    for p in proof:
        # a. "If sn is 0, then stop the iteration and fail the proof verification."
        if sn == 0:
            return False
        # b. "If LSB(fn) is set, or if fn is equal to sn, then:"
        if fn & 1 or fn == sn:
            # i. "Set r to HASH(0x01 || p || r)."
            r = node_hash(bytes(p), r)
            # ii. "If LSB(fn) is not set, then right-shift both fn and sn equally until
            #     either LSB(fn) is set or fn is 0."
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # "Otherwise: i. Set r to HASH(0x01 || r || p)."
            r = node_hash(r, bytes(p))
        # c. "Finally, right-shift both fn and sn one time."
        fn >>= 1
        sn >>= 1
    # 5. "Compare sn to 0. Compare r against the root_hash. If sn is equal to 0 and r and the
    #    root_hash are equal, then the log has proven the inclusion of hash."
    return sn == 0 and hmac.compare_digest(r, bytes(root))


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check a consistency proof with the algorithm of RFC 9162 §2.1.4.2; never raises.

    The RFC algorithm covers 0 < old_size < new_size. The trivial cases are decided here:
    old_size == new_size needs an empty proof and equal roots; old_size == 0 needs an empty
    proof and ``old_root == EMPTY_ROOT`` (every tree extends the empty tree, so ``new_root``
    is then only checked for being a well-formed hash). old_size > new_size, hashes that are
    not 32 bytes and proofs of the wrong length all return False.
    """
    if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size):
        return False
    if not (_is_hash(old_root) and _is_hash(new_root) and _proof_ok(proof)):
        return False
    first_hash, second_hash = bytes(old_root), bytes(new_root)
    if old_size == new_size:
        return len(proof) == 0 and hmac.compare_digest(first_hash, second_hash)
    if old_size == 0:
        return len(proof) == 0 and hmac.compare_digest(first_hash, EMPTY_ROOT)
    # 1. "If consistency_path is an empty array, stop and fail the proof verification."
    if len(proof) == 0:
        return False
    path = [bytes(p) for p in proof]
    # 2. "If first is an exact power of 2, then prepend first_hash to the consistency_path
    #    array."
    if old_size & (old_size - 1) == 0:
        path.insert(0, first_hash)
    # 3. "Set fn to first - 1 and sn to second - 1."
    fn, sn = old_size - 1, new_size - 1
    # 4. "If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set."
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. "Set both fr and sr to the first value in the consistency_path array."
    fr = sr = path[0]
    # 6. "For each subsequent value c in the consistency_path array:"
    for c in path[1:]:
        # a. "If sn is 0, then stop the iteration and fail the proof verification."
        if sn == 0:
            return False
        # b. "If LSB(fn) is set, or if fn is equal to sn, then:"
        if fn & 1 or fn == sn:
            # i. "Set fr to HASH(0x01 || c || fr)."  ii. "Set sr to HASH(0x01 || c || sr)."
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # iii. "If LSB(fn) is not set, then right-shift both fn and sn equally until
            #      either LSB(fn) is set or fn is 0."
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # "Otherwise: i. Set sr to HASH(0x01 || sr || c)."
            sr = node_hash(sr, c)
        # c. "Finally, right-shift both fn and sn one time."
        fn >>= 1
        sn >>= 1
    # 7. "... verify that the fr calculated is equal to the first_hash supplied, that the sr
    #    calculated is equal to the second_hash value supplied, and that sn is 0."
    return sn == 0 and hmac.compare_digest(fr, first_hash) and hmac.compare_digest(sr, second_hash)
