"""Reshape layout regrouping against numpy's own reshape (the oracle)."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mha2sha.analysis.layout import Atom, Axis, HeadSpace, axis_indices, per_head_layout
from mha2sha.analysis.regroup import group_dims, regroup


def _digits(axis: Axis, index: int) -> dict[int, int]:
    """Root index contributions of one position along an axis (row-major over its atoms)."""
    out: dict[int, int] = {}
    for atom in reversed(axis.atoms):
        ext = atom.extent
        digit = index % ext
        index //= ext
        if atom.root is not None and not atom.broadcast:
            out[atom.root] = out.get(atom.root, 0) + digit * atom.div
    return out


def _check_regroup(src: list[int], dst: list[int]) -> None:
    layout = tuple(Axis((Atom(d, i, 1, d),)) for i, d in enumerate(src))
    result = regroup(layout, list(src), list(dst))
    assert [ax.size for ax in result] == dst
    positions = np.arange(int(np.prod(src))).reshape(src)
    moved = positions.reshape(dst)
    for j in itertools.product(*(range(d) for d in dst)):
        roots: dict[int, int] = {}
        for axis, idx in zip(result, j):
            for r, v in _digits(axis, idx).items():
                roots[r] = roots.get(r, 0) + v
        expected = np.unravel_index(moved[j], src)
        got = tuple(roots.get(i, 0) for i in range(len(src)))
        assert got == tuple(int(e) for e in expected), (src, dst, j)


@st.composite
def reshapes(draw):
    factors = draw(st.lists(st.sampled_from([1, 2, 3, 4]), min_size=1, max_size=6))

    def partition(fs):
        dims, cur = [], 1
        for f in fs:
            cur *= f
            if draw(st.booleans()):
                dims.append(cur)
                cur = 1
        dims.append(cur)
        return dims

    return partition(factors), partition(factors)


@given(reshapes())
def test_regroup_matches_numpy_reshape(shapes):
    src, dst = shapes
    _check_regroup(src, dst)


def test_head_split_and_merge():
    # [B, S, H*D] -> [B, S, H, D] and back, as in every attention block.
    _check_regroup([2, 5, 12], [2, 5, 3, 4])
    _check_regroup([2, 5, 3, 4], [2, 5, 12])
    # Heads folded into batch and unfolded.
    _check_regroup([2, 3, 5, 4], [6, 5, 4])
    _check_regroup([6, 5, 4], [2, 3, 5, 4])


def test_symbolic_batch_folded_into_heads():
    groups = group_dims(["unk_1", 5, 8], ["batch", 4, 5, 8])
    assert groups == [([0], [0, 1]), ([1], [2]), ([2], [3])]
    layout = (Axis((Atom("unk_1", 0, 1, None),)), Axis((Atom(5),)), Axis((Atom(8),)))
    out = regroup(layout, ["unk_1", 5, 8], ["batch", 4, 5, 8])
    inner = out[1].atoms[0]
    assert (inner.root, inner.div, inner.mod) == (0, 1, 4)
    outer = out[0].atoms[0]
    assert (outer.root, outer.div, outer.mod) == (0, 4, None)


def test_per_head_channel_indices_are_the_heads_columns():
    # Channel axis [H=3, D=4] of a fused projection window at offset 12 (after a Q of 12).
    axis = Axis((Atom(3, 1, 1, 3), Atom(4)), offset=12, dim=36)
    space = HeadSpace(((1, 1, 3),))
    for h in range(3):
        assert axis_indices(axis, space, h) == list(range(12 + 4 * h, 12 + 4 * h + 4))


def test_gqa_kv_digit_classified_as_head_and_indexed_by_group():
    # q heads = 8 (root 1); a kv digit (h // 4) of size 2 after a repeat of 4.
    space = HeadSpace(((1, 1, 8),))
    kv = Atom(2, 1, 4, 2)
    assert space.classify(kv) == "head"
    assert [space.index(kv, h) for h in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    layout = (Axis((Atom(2, 0, 1, 2),)), Axis((kv,)), Axis((Atom(7),)), Axis((Atom(16),)))
    per, removed = per_head_layout(layout, space)
    assert removed == [1] and len(per) == 3
