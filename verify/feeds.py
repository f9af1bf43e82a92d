"""Seeded random inputs of the right shapes, dtypes and value ranges.

Symbolic dimensions get concrete values by name, the same value wherever the name appears;
names written as expressions by symbolic shape inference ("past + seq") are evaluated.
Distinct small primes are used so that no two unrelated dimensions coincide (a head dim
equal to a sequence length hides transposition bugs).

Value ranges follow how an input is used, not its name: an integer input that indexes a
constant table (token ids, positions) stays inside the table; other integer inputs are
0/1 masks and boolean inputs masks, padded (rows alternately left- and right-padded, with
holes; at least one position kept per row); float inputs are standard normal.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field

import numpy as np
import onnx

_PRIMES = [3, 5, 7, 11, 13, 17, 19, 23, 29, 31]
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv, ast.Div: operator.floordiv}


class FeedError(ValueError):
    pass


@dataclass
class DimAssigner:
    """Concrete values for symbolic dimensions."""

    values: dict[str, int] = field(default_factory=dict)
    batch: int = 2

    def resolve(self, dim, position: int) -> int:
        if isinstance(dim, int):
            return dim
        if dim is None or dim == "":
            raise FeedError("an input has a dimension with no name and no value")
        if dim in self.values:
            return self.values[dim]
        if any(c in dim for c in "+-*/"):
            return self._evaluate(dim)
        value = self.batch if position == 0 and not self.values else _PRIMES[len(self.values) % len(_PRIMES)]
        self.values[dim] = value
        return value

    def _evaluate(self, expr: str) -> int:
        tree = ast.parse(expr, mode="eval").body

        def ev(node):
            if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
                return _OPS[type(node.op)](ev(node.left), ev(node.right))
            if isinstance(node, ast.Constant) and isinstance(node.value, int):
                return node.value
            if isinstance(node, ast.Name):
                return self.resolve(node.id, 1)
            raise FeedError(f"cannot evaluate dimension {expr!r}")

        return int(ev(tree))


def _dims(info: onnx.ValueInfoProto) -> list:
    shape = info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _index_bounds(model: onnx.ModelProto, given: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """For inputs used as Gather indices into a constant table: the table's size.

    ``given``: inputs whose values the caller supplies (a block's weights fed as inputs
    are tables too)."""
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    inits.update({name: list(np.shape(value)) for name, value in (given or {}).items()})
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    inits[node.output[0]] = list(a.t.dims)
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            size = inits[node.input[0]][axis]
            bounds[node.input[1]] = min(bounds.get(node.input[1], size), size)
        if node.op_type == "RotaryEmbedding" and len(node.input) > 3 and node.input[3] and node.input[1] in inits:
            bounds[node.input[3]] = inits[node.input[1]][0]
    return bounds


def random_feeds(model: onnx.ModelProto, *, seed: int, dims: DimAssigner | None = None, overrides: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Random values for every graph input of ``model`` that is not an initializer."""
    dims = dims or DimAssigner()
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    bounds = _index_bounds(model, overrides)
    feeds: dict[str, np.ndarray] = {}
    for info in model.graph.input:
        if info.name in init_names:
            continue
        if overrides and info.name in overrides:
            feeds[info.name] = overrides[info.name]
            continue
        elem = info.type.tensor_type.elem_type
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        shape = [dims.resolve(d, i) for i, d in enumerate(_dims(info))]
        feeds[info.name] = _values(rng, shape, np_dtype, bounds.get(info.name))
    return feeds


def _values(rng: np.random.Generator, shape: list[int], dtype, bound: int | None) -> np.ndarray:
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if bound is not None and dtype != np.bool_:
        return rng.integers(0, max(bound, 1), shape).astype(dtype)
    return padded_mask(rng, shape, keep=0.7 if dtype == np.bool_ else 0.8).astype(dtype)


def padded_mask(rng: np.random.Generator, shape: list[int], keep: float = 0.8) -> np.ndarray:
    """A boolean mask with padding: rows (along the last axis) take turns being left-padded
    (the first third masked: with a causal mask, the first query rows see no key at all)
    and right-padded (the last third masked; a decode step's mask then hides part of the
    past), with random holes in the rest (``keep``: the share kept). Every row keeps at least
    one position, so no row of the mask input itself is empty."""
    mask = rng.random(shape) < keep
    if mask.ndim == 0:
        return np.asarray(True)
    length = shape[-1]
    if length == 0:
        return mask
    rows = mask.reshape(-1, length)
    pad = length // 3
    for r, row in enumerate(rows):
        if r % 2 == 0:  # left padding, then holes; the last position kept
            row[:pad] = False
            row[-1] = True
        else:  # right padding after a kept first position, holes between
            row[length - pad:] = False
            row[0] = True
    return rows.reshape(shape)


def dim_symbols(model: onnx.ModelProto) -> list[str]:
    init_names = {t.name for t in model.graph.initializer}
    out: list[str] = []
    for info in model.graph.input:
        if info.name in init_names:
            continue
        for d in _dims(info):
            if isinstance(d, str) and d not in out and not any(c in d for c in "+-*/"):
                out.append(d)
    return out


def static_dims(model: onnx.ModelProto, limit: int = 64) -> list[int]:
    """Small static sizes used by the model's constants (a traced mask fixes the sequence)."""
    found: list[int] = []
    for t in model.graph.initializer:
        for d in t.dims:
            if 1 < d <= limit and d not in found:
                found.append(int(d))
    return sorted(found)


def candidate_assignments(symbols: list[str], extra_values: list[int] | None = None):
    """Concrete values to try for the model's symbolic input dimensions, most distinct
    first, then with one dimension the sum of two others (total = past + new) or equal to
    another (a sequence shared under two names)."""
    base = {s: (2 if i == 0 else _PRIMES[(i - 1) % len(_PRIMES)]) for i, s in enumerate(symbols)}
    yield dict(base)
    tried = 1
    for x in symbols[1:]:
        for y in symbols[1:]:
            for z in symbols[1:]:
                if len({x, y, z}) == 3 and y < z:
                    cand = dict(base)
                    cand[x] = cand[y] + cand[z]
                    yield cand
                    tried += 1
    for x in symbols:
        for y in symbols:
            if x != y:
                cand = dict(base)
                cand[x] = cand[y]
                yield cand
    # Sizes fixed by constants: first three symbols whose constant sizes already add up
    # (a traced ALiBi or mask table [.., new, past + new] fixes all three), then each symbol
    # in turn, then pairs summing (past + new = total).
    values = extra_values or []
    addends = [1, *values] if values else []  # a single new token: 1 + past = total
    for x in symbols:
        for y in symbols:
            for z in symbols:
                if len({x, y, z}) == 3 and x < y:
                    for vx in addends:
                        for vy in addends:
                            if vx + vy in values:
                                cand = dict(base)
                                cand[x], cand[y], cand[z] = vx, vy, vx + vy
                                yield cand
    for x in symbols:
        for v in values:
            cand = dict(base)
            cand[x] = v
            yield cand
    for x in symbols:
        for y in symbols:
            for vx in values:
                for vy in values:
                    if x < y:
                        cand = dict(base)
                        cand[x], cand[y] = vx, vy
                        yield cand
                        for z in symbols:
                            if z not in (x, y):
                                with_sum = dict(cand)
                                with_sum[z] = vx + vy
                                yield with_sum
