"""The op registry: (domain, op_type) -> adapter.

An adapter is a small function ``(ctx, inputs, attrs) -> list of outputs`` that turns one
ONNX node into calls of refimpl.functional or numpy. ``inputs`` holds one array per node
input (None for an omitted optional input); ``attrs`` the node's attributes as Python
values (tensors as arrays, strings as str). Float inputs already are in the interpreter's
compute dtype (``ctx.float_dtype``); integer and boolean tensors keep their types.
Adapters never modify their inputs in place (they may be weights shared between runs).
An adapter may return fewer outputs than the node declares when the rest are optional.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ctx:
    """What an adapter may need to know about its node besides inputs and attributes."""

    opset: int  # the model's opset for the node's domain
    float_dtype: type  # np.float32 or np.float64: every float tensor is computed in it
    node_name: str
    n_outputs: int = 1  # outputs the node declares (Split without sizes needs it)


Adapter = Callable[[Ctx, list, dict], list]
REGISTRY: dict[tuple[str, str], Adapter] = {}


def op(*op_types: str, domain: str = ""):
    """Register the decorated adapter for ``op_types`` in ``domain`` ("" is ai.onnx)."""

    def register(fn: Adapter) -> Adapter:
        for name in op_types:
            REGISTRY[(domain, name)] = fn
        return fn

    return register


def floats(ctx: Ctx, value) -> np.ndarray:
    """``value`` as an array; a float one in the compute dtype."""
    arr = np.asarray(value)
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype != ctx.float_dtype:
        return arr.astype(ctx.float_dtype)
    return arr


def ints(value) -> list[int]:
    """A 1-D (or scalar) integer tensor as a list of Python ints."""
    return [int(v) for v in np.asarray(value).reshape(-1)]


def optional(inputs: list, index: int):
    """Input ``index`` or None when it is omitted (absent or empty name)."""
    return inputs[index] if len(inputs) > index else None


def axes_of(inputs: list, attrs: dict, *, input_index: int = 1) -> list[int] | None:
    """Axes from the ``axes`` attribute (older opsets) or from input ``input_index``."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    given = optional(inputs, input_index)
    return None if given is None else ints(given)
