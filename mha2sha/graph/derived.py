"""Weights computed from one source weight, described rather than computed.

A per-head projection weight is a slice of the MHA weight. Held as an ``ir.LazyTensor``
whose function is a ``Derivation``, it costs nothing until it is read, and the writer can
see where it comes from: it reads each source once (not once per head) and writes every
weight derived from it in one go (mha2sha.graph.writer).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


class Derivation:
    """``derive(source array) -> new array``; calling it (as ir.LazyTensor does) reads the
    source, derives, and releases the source's memory map at once (mapped pages count as
    resident memory, and a 7B model's q/k/v weights would add up)."""

    def __init__(self, source: ir.TensorProtocol):
        self.source = source

    def derive(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self) -> ir.TensorProtocol:
        array = self.derive(self.source.numpy())
        if isinstance(self.source, ir.ExternalTensor):
            self.source.release()
        return ir.tensor(array)


class Take(Derivation):
    """``source`` restricted to ``indices`` along ``axis`` (a head's channels)."""

    def __init__(self, source: ir.TensorProtocol, indices: list[int], axis: int):
        super().__init__(source)
        self.indices = list(indices)
        self.axis = axis

    def derive(self, array: np.ndarray) -> np.ndarray:
        return take(array, self.indices, self.axis)


def derived_tensor(derivation: Derivation, shape: list[int], name: str) -> ir.LazyTensor:
    return ir.LazyTensor(derivation, dtype=derivation.source.dtype, shape=ir.Shape(shape), name=name)


def derivation_of(tensor) -> Derivation | None:
    """The Derivation behind a tensor made by ``derived_tensor``, else None."""
    if isinstance(tensor, ir.LazyTensor) and isinstance(tensor.raw, Derivation):
        return tensor.raw
    return None


def take(array: np.ndarray, indices: list[int], axis: int) -> np.ndarray:
    """``array`` restricted to ``indices`` along ``axis``; a plain slice when contiguous.
    Always a copy: a view of a memory map would keep the map (and its pages) alive."""
    if indices == list(range(indices[0], indices[0] + len(indices))):
        index = [slice(None)] * array.ndim
        index[axis] = slice(indices[0], indices[0] + len(indices))
        return np.array(array[tuple(index)], order="C", copy=True)
    return np.ascontiguousarray(np.take(array, indices, axis=axis))
