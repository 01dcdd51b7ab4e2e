"""Consistent hashing (core/hashring.py) and Merkle trees (core/merkle.py), the pure
parts of leaderless replication."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replidb.core.hashring import HashRing
from replidb.core.merkle import MerkleTree, bucket_of

KEYS = [f"key-{i}".encode() for i in range(2000)]


def test_a_preference_list_is_n_distinct_nodes_the_same_everywhere() -> None:
    ring = HashRing(["n3", "n1", "n2", "n4", "n5"])
    again = HashRing(["n1", "n2", "n3", "n4", "n5"])
    for key in KEYS[:200]:
        chosen = ring.preference_list(key, 3)
        assert len(set(chosen)) == 3 and chosen == again.preference_list(key, 3)
        assert sorted(ring.preference_list(key, 5)) == ["n1", "n2", "n3", "n4", "n5"]
    with pytest.raises(ValueError, match="N=6 must be between 1 and the number of nodes"):
        ring.preference_list(b"k", 6)


def test_keys_spread_evenly_and_a_new_node_moves_only_its_share() -> None:
    four = HashRing(["n1", "n2", "n3", "n4"], vnodes=64)
    five = HashRing(["n1", "n2", "n3", "n4", "n5"], vnodes=64)
    firsts = [four.preference_list(k, 1)[0] for k in KEYS]
    assert all(300 < firsts.count(n) < 700 for n in four.nodes)  # ~500 each
    moved = sum(a != five.preference_list(k, 1)[0] for a, k in zip(firsts, KEYS, strict=True))
    assert moved < 0.3 * len(KEYS)  # ~1/5 move, all of them to n5
    assert all(
        five.preference_list(k, 1)[0] in (a, "n5") for a, k in zip(firsts, KEYS, strict=True)
    )


def test_a_sloppy_quorum_sends_a_down_nodes_share_past_the_preference_list() -> None:
    ring = HashRing(["n1", "n2", "n3", "n4", "n5"])
    key = KEYS[7]
    preferred = ring.preference_list(key, 3)
    down = {preferred[1]}
    targets = ring.sloppy_list(key, 3, down)
    assert [t for t in targets if t[0] == t[1]] == [(p, p) for p in preferred if p not in down]
    (stand_in,) = [t for t in targets if t[0] != t[1]]
    assert stand_in[1] == preferred[1] and stand_in[0] not in preferred
    everyone_else_down = set(ring.nodes) - set(preferred) | down
    assert len(ring.sloppy_list(key, 3, everyone_else_down)) == 2  # no stand-in left


items = st.dictionaries(st.binary(min_size=1, max_size=8), st.binary(min_size=1, max_size=4),
                        max_size=60)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(items, st.binary(min_size=1, max_size=8), st.integers(0, 8))
def test_merkle_diff_finds_exactly_the_buckets_that_differ(
    data: dict[bytes, bytes], key: bytes, depth: int
) -> None:
    tree = MerkleTree(data.items(), depth)
    assert MerkleTree(reversed(list(data.items())), depth).root == tree.root
    changed = {**data, key: data.get(key, b"") + b"!"}
    other = MerkleTree(changed.items(), depth)
    assert tree.diff(other) == [bucket_of(key, depth)]
    assert tree.diff(MerkleTree(data.items(), depth)) == []
    missing = {k: v for k, v in data.items() if k != key}
    expected = [bucket_of(key, depth)] if key in data else []
    assert tree.diff(MerkleTree(missing.items(), depth)) == expected
