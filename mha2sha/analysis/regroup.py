"""Carry axis layouts through Reshape: which source axes become which destination axes.

A Reshape only regroups the row-major sequence of elements, so the atoms of the source axes,
read in order, are the atoms of the destination axes; the work is to cut that sequence at
the destination's axis boundaries, splitting an atom when a boundary falls inside it
([B*H] -> [B, H]). Sizes may be symbolic ("batch", "seq") or unknown: they are compared as
monomials (an integer times a product of symbols), and where nothing can be compared the
remaining middle part of the shapes is taken as one group.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from mha2sha.analysis.layout import Atom, Axis, Size, product


class RegroupError(ValueError):
    pass


@dataclass(frozen=True)
class Monomial:
    coef: int
    symbols: tuple[str, ...]

    def __mul__(self, other: Monomial) -> Monomial:
        return Monomial(self.coef * other.coef, tuple(sorted(self.symbols + other.symbols)))

    def divides(self, other: Monomial) -> bool:
        if self.coef == 0 or other.coef % self.coef:
            return False
        mine, theirs = Counter(self.symbols), Counter(other.symbols)
        return all(theirs[s] >= n for s, n in mine.items())

    def __truediv__(self, other: Monomial) -> Monomial:
        left = Counter(self.symbols)
        left.subtract(Counter(other.symbols))
        return Monomial(self.coef // other.coef, tuple(sorted(left.elements())))

    def to_size(self) -> Size:
        if not self.symbols:
            return self.coef
        parts = ([str(self.coef)] if self.coef != 1 else []) + list(self.symbols)
        return "*".join(parts)


ONE = Monomial(1, ())


def monomial(size: Size, unknown_tag: str) -> Monomial:
    if size is None:
        return Monomial(1, (f"?{unknown_tag}",))
    if isinstance(size, int):
        return Monomial(size, ())
    coef = 1
    symbols: list[str] = []
    for part in size.split("*"):
        if part.isdigit():
            coef *= int(part)
        else:
            symbols.append(part)
    return Monomial(coef, tuple(sorted(symbols)))


def group_dims(src: list[Size], dst: list[Size]) -> list[tuple[list[int], list[int]]]:
    """Partition two shapes with equal element counts into matching runs of axes."""
    ms = [monomial(s, f"s{i}") for i, s in enumerate(src)]
    md = [monomial(d, f"d{i}") for i, d in enumerate(dst)]

    def greedy(order_src: list[int], order_dst: list[int]):
        groups: list[tuple[list[int], list[int]]] = []
        i = j = 0
        while i < len(order_src) and j < len(order_dst):
            start_i, start_j = i, j
            gs, gd = [order_src[i]], [order_dst[j]]
            i += 1
            j += 1
            ps, pd = ms[gs[0]], md[gd[0]]
            while ps != pd:
                if ps.divides(pd) and i < len(order_src):
                    gs.append(order_src[i])
                    ps = ps * ms[order_src[i]]
                    i += 1
                elif pd.divides(ps) and j < len(order_dst):
                    gd.append(order_dst[j])
                    pd = pd * md[order_dst[j]]
                    j += 1
                else:
                    return groups, start_i, start_j, False
            groups.append((gs, gd))
        return groups, i, j, True

    left, li, lj, _ = greedy(list(range(len(src))), list(range(len(dst))))
    if li == len(src) and lj == len(dst):
        return left
    right, ri, rj, _ = greedy(list(range(len(src) - 1, li - 1, -1)), list(range(len(dst) - 1, lj - 1, -1)))
    right = [(sorted(gs), sorted(gd)) for gs, gd in reversed(right)]
    mid_src = list(range(li, len(src) - ri))
    mid_dst = list(range(lj, len(dst) - rj))
    if not mid_src and not mid_dst:
        return left + right
    if not mid_src or not mid_dst:
        # Only size-1 axes may be left over on one side: attach them to a neighbour group.
        leftovers = mid_src or mid_dst
        sizes = ms if mid_src else md
        if any(sizes[k] != ONE for k in leftovers):
            raise RegroupError(f"cannot match shapes {src} and {dst}")
        groups = left + right
        if not groups:
            raise RegroupError(f"cannot match shapes {src} and {dst}")
        gs, gd = groups[-1] if left else groups[0]
        target = gs if mid_src else gd
        target.extend(leftovers)
        target.sort()
        return groups
    return left + [(mid_src, mid_dst)] + right


def _has_unknown(m: Monomial) -> bool:
    return any(s.startswith("?") for s in m.symbols)


def _distribute(atoms: list[Atom], sizes: list[Size]) -> list[tuple[Atom, ...]]:
    """Cut a row-major atom sequence into axes of the given sizes, innermost axis first."""
    non_unit = [k for k, size in enumerate(sizes) if size != 1]
    if len(non_unit) == 1:
        # One real axis (the others have size 1): it takes every atom, whatever the spelling
        # of its size ([1, 1, B*S, E] from [B, S, E]).
        out: list[tuple[Atom, ...]] = [() for _ in sizes]
        out[non_unit[0]] = tuple(atoms)
        return out
    stack = list(atoms)
    out: list[list[Atom]] = [[] for _ in sizes]
    for k in range(len(sizes) - 1, -1, -1):
        if k == 0:
            out[0] = stack + out[0]
            stack = []
            break
        remaining = monomial(sizes[k], f"x{k}")
        taken: list[Atom] = []
        while remaining != ONE:
            if not stack:
                raise RegroupError("atoms exhausted while regrouping")
            atom = stack.pop()
            ext = monomial(atom.extent, f"a{id(atom)}")
            if ext == ONE:
                taken.insert(0, atom)
            elif ext.divides(remaining):
                taken.insert(0, atom)
                remaining = remaining / ext
            elif not remaining.symbols and (remaining.divides(ext) or ext.symbols):
                # A symbolic size that must contain this static factor (the shapes were
                # matched as one group, so their element counts agree).
                inner = remaining.coef
                outer_m = ext / remaining if remaining.divides(ext) and not _has_unknown(ext) else None
                outer_size = outer_m.to_size() if outer_m is not None else product(sizes[:k])
                outer, inner_atom = atom.split(inner, outer_size)
                taken.insert(0, inner_atom)
                stack.append(outer)
                remaining = ONE
            else:
                raise RegroupError(f"cannot cut an axis of size {atom.extent} into {sizes[k]}")
        # Size-1 stand-ins directly before this axis' atoms stay with it.
        while stack and stack[-1].extent == 1 and k > 0 and sizes[k - 1] != 1:
            taken.insert(0, stack.pop())
        out[k] = taken
    return [tuple(a) for a in out]


def regroup(src_axes: tuple[Axis, ...], src_dims: list[Size], dst_dims: list[Size]) -> tuple[Axis, ...]:
    """The layout of a Reshape's destination given its source layout and both shapes."""
    result: list[Axis | None] = [None] * len(dst_dims)
    for gs, gd in group_dims(src_dims, dst_dims):
        group_axes = [src_axes[i] for i in gs]
        windows = [ax.is_window for ax in group_axes]
        if any(windows) and not any(a.root is not None for ax in group_axes for a in ax.atoms):
            # A picked index (Gather of a RoPE pair) among free axes: the destination axes are
            # free; no head digit is involved, so no window needs to be expressed.
            for k in gd:
                result[k] = Axis((Atom(dst_dims[k]),))
            continue
        if any(windows):
            real_src = [i for i in gs if src_dims[i] != 1 or src_axes[i].is_window]
            real_dst = [k for k in gd if dst_dims[k] != 1]
            if len(real_src) == 1 and len(real_dst) == 1:
                # One real axis on each side (others have size 1): the window carries over.
                ax = src_axes[real_src[0]]
                for k in gd:
                    result[k] = Axis(())
                result[real_dst[0]] = Axis(ax.atoms, ax.offset, dst_dims[real_dst[0]])
                continue
            if len(gd) == 1 and not any(windows[1:]):
                # Only the outermost axis is a window: the merged axis is a window too.
                inner_sizes = [ax.full_size for ax in group_axes[1:]]
                stride = product(inner_sizes)
                if not isinstance(stride, int):
                    raise RegroupError("a window merged with symbolic axes")
                outer = group_axes[0]
                atoms = tuple(a for ax in group_axes for a in ax.atoms)
                result[gd[0]] = Axis(atoms, outer.offset * stride, dst_dims[gd[0]])
                continue
            if len(gd) == 1:
                # Windows inside the merged axis (a q/k/v selector on a middle axis: [H, 3, D]
                # or Falcon's [KV, n + 2, D]): each window becomes a digit with a span.
                atoms = []
                for ax in group_axes:
                    if not ax.is_window:
                        atoms.extend(ax.atoms)
                    elif not ax.atoms:
                        atoms.append(Atom(1, span=ax.full_size, start=ax.offset))  # a picked index
                    elif len(ax.atoms) == 1 and isinstance(ax.full_size, int):
                        atoms.append(replace(ax.atoms[0], span=ax.full_size, start=ax.offset))
                    else:
                        raise RegroupError("a window of several digits inside a merged axis")
                result[gd[0]] = Axis(tuple(atoms), 0, dst_dims[gd[0]])
                continue
            raise RegroupError("a window of a dimension cannot be split by Reshape")
        atoms = [a for ax in group_axes for a in ax.atoms]
        for k, piece in zip(gd, _distribute(atoms, [dst_dims[k] for k in gd])):
            result[k] = Axis(piece)
    return tuple(ax if ax is not None else Axis(()) for ax in result)
