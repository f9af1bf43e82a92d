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


class LinearAsConv(Derivation):
    """A MatMul/Gemm weight as a 1x1 Conv weight [O, I, 1, 1]: transposed when it was
    [I, O], times Gemm's alpha."""

    def __init__(self, source: ir.TensorProtocol, *, transpose: bool, alpha: float = 1.0):
        super().__init__(source)
        self.transpose = transpose
        self.alpha = alpha

    def derive(self, array: np.ndarray) -> np.ndarray:
        out = transposed(array) if self.transpose else array
        if self.alpha != 1.0:
            out = (out * self.alpha).astype(array.dtype)
        return np.ascontiguousarray(out).reshape(out.shape[0], out.shape[1], 1, 1)


def transposed(array: np.ndarray, tile: int = 64, out: np.ndarray | None = None) -> np.ndarray:
    """``array.T`` as a new C-ordered array (or into ``out``), copied tile by tile: numpy's
    own strided copy of a large matrix misses the cache on every element (3.5x slower on a
    4096 x 11008 float16 weight, measured)."""
    rows, cols = array.shape
    if out is not None:
        if rows * cols < 1 << 16:
            out[...] = array.T
            return out
    elif rows * cols < 1 << 16:
        return np.ascontiguousarray(array.T)
    else:
        out = np.empty((cols, rows), array.dtype)
    for i in range(0, rows, tile):
        for j in range(0, cols, tile):
            out[j:j + tile, i:i + tile] = array[i:i + tile, j:j + tile].T
    return out


class Composed(Derivation):
    """``outer`` applied to what ``inner`` derives: one source read for both (a head's
    slice of a projection weight, laid out for a Conv)."""

    def __init__(self, inner: Derivation, outer: Derivation):
        super().__init__(inner.source)
        self.inner = inner
        self.outer = outer

    def derive(self, array: np.ndarray) -> np.ndarray:
        return self.outer.derive(self.inner.derive(array))


def derive_from(tensor: ir.TensorProtocol, derivation_of_tensor) -> Derivation:
    """``derivation_of_tensor(tensor)`` made to read the root source when ``tensor`` is itself
    derived (so the writer still reads each input weight once)."""
    outer = derivation_of_tensor(tensor)
    inner = derivation_of(tensor)
    return Composed(inner, outer) if inner is not None else outer


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
