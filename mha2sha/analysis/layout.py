"""Axis layouts: where the attention heads live in every tensor of an attention block.

Legend used throughout the analysis:
    B  batch            S  query sequence      T  key/value sequence (past + new)
    H  query heads      KV key/value heads     D  head dim            E  hidden = H * D

Every axis of a tensor in an attention block is a row-major product of *atoms*. An atom is
either free (batch, sequence, head dim: kept in every per-head tensor) or derived from a
*root*: one of the batch axes of the attention scores at the core. Roots are candidates;
the analysis learns which roots (or which digits of a root, when heads are folded into the
batch) are heads by following the query path up to its projection, where the head digits
sit next to the head dim inside the output-channel axis.

An atom derived from root r stands for the digit ``(index_r // div) % mod`` of that root's
index, so splitting an axis ([B*H] -> [B, H]) or a GQA repeat ([H] -> [KV, n]) is integer
arithmetic on (div, mod), never a name lookup. ``broadcast=True`` marks a size-1 stand-in for
an atom (a mask's head axis of size 1, the Expand input of a GQA repeat): its index is 0.

An axis may also be a *window* of a larger dimension (the Q part of a fused QKV projection):
``offset`` is where the window starts and ``dim`` the full size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from mha2sha.graph.ir_utils import Size  # a dimension: static int, symbolic name, or None


def _cached_hash(self) -> int:
    # Layouts are dictionary keys on the hot path; hash each immutable object once.
    try:
        return self.__dict__["_hash"]
    except KeyError:
        h = hash(tuple(getattr(self, f) for f in self.__dataclass_fields__))
        object.__setattr__(self, "_hash", h)
        return h


@dataclass(frozen=True)
class Atom:
    size: Size
    root: int | None = None
    div: int = 1
    mod: int | None = None  # None: unbounded (outermost digit of a root of symbolic size)
    broadcast: bool = False
    # A digit that is a window of a larger one: index i sits at position start + i of a digit
    # of size ``span`` in the source dimension (the q/k/v selector of a fused projection on a
    # middle axis: [B, S, H, 3, D] picks one of 3; Falcon's [B, S, KV, n + 2, D] the first n).
    span: int | None = None
    start: int = 0

    __hash__ = _cached_hash

    @property
    def extent(self) -> Size:
        """The atom's contribution to its axis size (1 for a broadcast stand-in)."""
        return 1 if self.broadcast else self.size

    @property
    def stride_size(self) -> Size:
        """The atom's contribution to the size of the dimension it indexes (its span)."""
        return self.span if self.span is not None else self.extent

    def dense(self) -> Atom:
        """The same digit in a tensor that holds only its window (a head's piece)."""
        return self if self.span is None else replace(self, span=None, start=0)

    def same_as(self, other: Atom) -> bool:
        """Same digit of the same root (sizes of symbolic parts may be spelled differently)."""
        if self.root is None or other.root is None:
            return self == other
        return (self.root, self.div, self.mod, self.broadcast) == (other.root, other.div, other.mod, other.broadcast)

    def as_broadcast(self) -> Atom:
        return replace(self, broadcast=True)

    def split(self, inner: int, outer_size: Size) -> tuple[Atom, Atom]:
        """Split into (outer, inner) digits, inner of static size ``inner``."""
        if self.root is None:
            return Atom(outer_size), Atom(inner)
        outer_mod = None if self.mod is None else self.mod // inner
        outer = Atom(outer_size, self.root, self.div * inner, outer_mod, self.broadcast)
        return outer, Atom(inner, self.root, self.div, inner, self.broadcast)


def free(size: Size) -> Atom:
    return Atom(size)


@dataclass(frozen=True)
class Axis:
    atoms: tuple[Atom, ...]
    offset: int = 0
    dim: Size = None  # full size of the dimension when the axis is a window of it

    __hash__ = _cached_hash

    @property
    def size(self) -> Size:
        return product(a.extent for a in self.atoms)

    @property
    def full_size(self) -> Size:
        return self.size if self.dim is None else self.dim

    @property
    def is_window(self) -> bool:
        return self.dim is not None


Layout = tuple[Axis, ...]


def same_atoms(a: tuple[Atom, ...], b: tuple[Atom, ...]) -> bool:
    return len(a) == len(b) and all(x.same_as(y) for x, y in zip(a, b))


def product(sizes) -> Size:
    """Product of sizes; symbolic factors give a symbolic name, unknown gives None."""
    static = 1
    symbols: list[str] = []
    for s in sizes:
        if s is None:
            return None
        if isinstance(s, str):
            symbols.append(s)
        else:
            static *= int(s)
    if not symbols:
        return static
    if static == 0:
        return 0
    parts = ([str(static)] if static != 1 else []) + sorted(symbols)
    return "*".join(parts)


def sizes_equal(a: Size, b: Size) -> bool:
    return a is not None and b is not None and a == b


@dataclass
class HeadSpace:
    """The head digits of one block, learned from its query projection.

    ``digits`` lists (root, div, mod) in head-major order: query head h is the mixed-radix
    number whose digits are these atoms' indices.
    """

    digits: tuple[tuple[int, int, int], ...]
    group: int = 1
    # Roots whose axes never disappear in a head's piece: the query axis is a matrix row of
    # MatMul(Q, K^T) even when the exporter folded heads into it and the sequence is 1.
    matrix_roots: frozenset[int] = frozenset()
    by_root: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    _refined: dict[Atom, tuple[Atom, ...]] = field(default_factory=dict, repr=False)
    _heads_of: dict[Layout, list[Atom]] = field(default_factory=dict, repr=False)
    _keys: dict[tuple[Layout, int], tuple[int, ...]] = field(default_factory=dict, repr=False)
    _per_head: dict[Layout, tuple[Layout, list[int]]] = field(default_factory=dict, repr=False)
    _root_values: dict[int, dict[int, int]] = field(default_factory=dict, repr=False)
    _axis_plans: dict[Axis, tuple | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for root, div, mod in self.digits:
            self.by_root.setdefault(root, []).append((root, div, mod))

    @property
    def num_heads(self) -> int:
        """How many pieces the block is split into (heads, or groups of ``group`` heads)."""
        return math.prod(mod for _, _, mod in self.digits)

    def grouped(self, group: int) -> HeadSpace:
        """The space whose 'heads' are groups of ``group`` consecutive query heads (AR-M).

        The lowest digits of the head index, worth ``group``, become free: a group keeps a
        head axis of that size. Raises ValueError when ``group`` is not a whole number of
        the least significant head digits (or an exact part of one).
        """
        if group == 1:
            return self
        digits = list(self.digits)
        remaining = group
        while remaining > 1:
            if not digits:
                raise ValueError(f"{group} heads per block does not divide the {self.num_heads} heads")
            root, div, mod = digits.pop()
            if remaining % mod == 0:
                remaining //= mod
            elif mod % remaining == 0:
                digits.append((root, div * remaining, mod // remaining))
                remaining = 1
            else:
                raise ValueError(f"{group} heads per block does not divide the {self.num_heads} heads")
        return HeadSpace(tuple(digits), group=group, matrix_roots=self.matrix_roots)

    def root_indices(self, head: int) -> dict[int, int]:
        """Head ``head``'s contribution to each root's index (do not modify: cached)."""
        values = self._root_values.get(head)
        if values is None:
            values = {}
            remaining = head
            for root, div, mod in reversed(self.digits):
                digit = remaining % mod
                remaining //= mod
                values[root] = values.get(root, 0) + digit * div
            self._root_values[head] = values
        return values

    def _head_intervals(self, root: int) -> list[tuple[int, int]]:
        """Place-value intervals [div, div*mod) of the root's head digits, adjacent ones merged."""
        spans = sorted((div, div * mod) for _, div, mod in self.by_root.get(root, []))
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and merged[-1][1] == lo:
                merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def classify(self, atom: Atom) -> str:
        """'head' when the atom is fixed by the head index, 'free' when independent of it.

        Raises ValueError for an atom that mixes head and non-head digits (for example a
        folded [B*H] axis that must be sliced with batch > 1 in the middle of it).
        """
        if atom.root is None or atom.root not in self.by_root:
            return "free"
        lo = atom.div
        hi = None if atom.mod is None else atom.div * atom.mod
        # Digits of one root form a mixed radix only if their boundaries divide one another:
        # h % 2 is not a digit of h = 3 g + r (a Tile repeat against groups of 3 heads).
        for _, div, mod in self.by_root[atom.root]:
            for b in (div, div * mod):
                for a in (lo, hi):
                    if a is not None and a > 1 and b > 1 and a % b and b % a:
                        raise ValueError(f"axis digit {atom} does not align with the head grouping")
        for h_lo, h_hi in self._head_intervals(atom.root):
            if hi is not None and h_lo <= lo and hi <= h_hi:
                return "head"
            overlaps = h_hi > lo and (hi is None or h_lo < hi)
            if overlaps:
                raise ValueError(f"axis digit {atom} mixes head and non-head positions")
        return "free"

    def refine(self, atom: Atom) -> tuple[Atom, ...]:
        """Cut an atom at the head-digit boundaries: a folded [B*H] digit becomes [B][H],
        so that each part is either wholly head or wholly free."""
        cached = self._refined.get(atom)
        if cached is not None:
            return cached
        parts: tuple[Atom, ...] = (atom,)
        if atom.root is not None and atom.root in self.by_root:
            lo = atom.div
            hi = None if atom.mod is None else atom.div * atom.mod
            cuts = sorted(
                {b for iv in self._head_intervals(atom.root) for b in iv if lo < b and (hi is None or b < hi)}
            )
            if cuts:
                bounds: list[int | None] = [lo, *cuts, hi]
                pieces = []
                for a, b in zip(bounds[:-1], bounds[1:]):
                    if b is not None and b % a:
                        raise ValueError(f"the head grouping does not align with axis digit {atom}")
                    mod = None if b is None else b // a
                    if mod is not None:
                        size: Size = mod
                    elif isinstance(atom.size, int):
                        size = atom.size // (a // lo)
                    else:
                        size = None
                    pieces.append(Atom(size, atom.root, a, mod, atom.broadcast))
                parts = tuple(reversed(pieces))
        self._refined[atom] = parts
        return parts

    def refine_axis(self, ax: Axis) -> Axis:
        atoms = tuple(p for a in ax.atoms for p in self.refine(a))
        return ax if atoms == ax.atoms else Axis(atoms, ax.offset, ax.dim)

    def index(self, atom: Atom, head: int) -> int:
        """The index of a head atom for query head ``head`` (0 for a broadcast stand-in)."""
        if atom.broadcast:
            return 0
        root_value = self.root_indices(head).get(atom.root, 0)
        value = root_value // atom.div
        return value if atom.mod is None else value % atom.mod


def head_atoms(layout: Layout, space: HeadSpace) -> list[Atom]:
    found = space._heads_of.get(layout)
    if found is None:
        found = [a for ax in layout for a in space.refine_axis(ax).atoms if space.classify(a) == "head"]
        space._heads_of[layout] = found
    return found


def key_of(layout: Layout, space: HeadSpace, head: int) -> tuple[int, ...]:
    """Which per-head copy of a tensor query head ``head`` reads: heads with the same key
    share one copy (a K/V tensor is shared by the query heads of its kv group)."""
    k = (layout, head)
    found = space._keys.get(k)
    if found is None:
        found = tuple(space.index(a, head) for a in head_atoms(layout, space) if not a.broadcast)
        space._keys[k] = found
    return found


def per_head_layout(layout: Layout, space: HeadSpace) -> tuple[Layout, list[int]]:
    """The layout of one head's piece, and the original axes that disappear in it.

    An axis made only of head atoms disappears (one head selects one index); an axis that
    also has free atoms (the channel axis [H, D]) keeps the free part.
    """
    found = space._per_head.get(layout)
    if found is not None:
        return found
    new_axes: list[Axis] = []
    removed: list[int] = []
    for i, ax in enumerate(layout):
        ax = space.refine_axis(ax)
        kinds = [space.classify(a) for a in ax.atoms]
        if ax.atoms and all(k == "head" for k in kinds) and not any(a.root in space.matrix_roots for a in ax.atoms):
            removed.append(i)
            continue
        kept = tuple(a.dense() for a, k in zip(ax.atoms, kinds) if k == "free" and (a.span is None or a.extent != 1))
        if len(kept) != len(ax.atoms):
            new_axes.append(Axis(kept))
        else:
            new_axes.append(Axis(kept) if ax.is_window else ax)
    found = (tuple(new_axes), removed)
    space._per_head[layout] = found
    return found


def axis_indices(ax: Axis, space: HeadSpace, head: int) -> list[int] | None:
    """Indices (within the full dimension) that head ``head`` selects on one axis, in
    row-major order of the axis' free atoms; None when the axis has no head atoms.

    Free atoms must have static sizes; the result may be non-contiguous (any order of
    head and free atoms is allowed).
    """
    plan = space._axis_plans.get(ax, False)
    if plan is False:
        plan = space._axis_plans[ax] = _axis_plan(ax, space)
    if plan is None:
        return None
    heads, free_offsets = plan
    base = ax.offset + sum(space.index(a, head) * stride for a, stride in heads)
    if isinstance(free_offsets, range) and free_offsets.start == 0:
        return list(range(base, base + len(free_offsets)))
    return [base + f for f in free_offsets]


def _axis_plan(ax: Axis, space: HeadSpace) -> tuple[list[tuple[Atom, int]], list[int]] | None:
    """What axis_indices needs for every head: the head atoms with their strides, and the
    offsets of all free positions (row-major); None when the axis has no head atoms."""
    ax = space.refine_axis(ax)
    kinds = [space.classify(a) for a in ax.atoms]
    if not any(k == "head" for k in kinds):
        return None
    strides: list[int] = []
    stride = 1
    for a in reversed(ax.atoms):
        strides.append(stride)
        ext = a.stride_size
        if not isinstance(ext, int):
            raise ValueError("a head-carrying axis needs static sizes")
        stride *= ext
    strides.reverse()
    heads: list[tuple[Atom, int]] = []
    free_offsets = [0]
    base = 0  # windows of digits (spans) start inside their digit
    for a, k, st in zip(ax.atoms, kinds, strides):
        base += a.start * st
        if k == "head":
            heads.append((a, st))
        else:
            free_offsets = [i + j * st for i in free_offsets for j in range(int(a.extent))]
    free_offsets = [base + f for f in free_offsets]
    if free_offsets == list(range(len(free_offsets))):
        return heads, range(len(free_offsets))  # the usual [.., head, dim] channel axis
    return heads, free_offsets
