"""The internal form of an AIMET encodings file: one ``TensorEncoding`` per tensor, whatever
the file's version, in an ``EncodingSet``.

Numbers are kept exactly as the file wrote them, in numpy arrays (``exact``): float64 where
the file wrote floats, int64 where it wrote ints, an object array of the Python numbers
where it mixed them, so writing the file back in its own version gives equal JSON (an int
stays an int, a float keeps every bit; write ``a.tolist()``, never numpy scalars). Arithmetic
uses float views (``np.asarray(a, np.float64)``).

Layouts (C channels, nb blocks along the input-channel axis):

=============  ======================  ============================================
kind           ``scale`` / ``offset``   also
=============  ======================  ============================================
float          None                     ``bitwidth`` 16 (or 8, 32)
per_tensor     shape ()                 0.6.1 ``min`` / ``max`` of the same shape
per_channel    (C,) in channel order    0.6.1 ``min`` / ``max``; ``channel_axis``
per_block      (C, nb) channel-major    ``block_size``; 1.0.0 files store no channel
                                        count: (C*nb,) until ``with_channels(C)``
lpbq           (C,) float channel scale ``per_block_int_scale`` (C, nb), ``offset``
               (C,) decompressed offset the 1.0.0 one (None when the file has none)
=============  ======================  ============================================

Offsets are AIMET's: zero or negative, real = (q + offset) * scale.

Where the channels lie in the tensor (``channel_axis``, ``block_axis``, ``rank``) is stored
by 2.x files only; for 0.6.1 / 1.0.0 it comes from the model (``EncodingSet.bind``) or from
``move_channel_axis``. Everything a file says that this form does not model is kept too:
unknown entry fields (``extras``; 0.6.1 per-channel dicts: ``channel_extras``) and how the
source wrote each entry (``style``: literal spellings, omitted fields), used only when the
entry is written back in the version it was read from.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mha2sha.encodings.errors import OBJECT_SOURCE
from refimpl.quant import QuantEncoding

_ARRAYS = ("scale", "offset", "min", "max", "per_block_int_scale")
KINDS = ("float", "per_tensor", "per_channel", "per_block", "lpbq")
BLOCKED = ("per_block", "lpbq")


def exact(values, types: set | None = None) -> np.ndarray:
    """The file's numbers (a number or a regular nested list) as a numpy array that gives
    them back exactly (``tolist()``): float64 when all are floats, int64 when all are ints
    that fit, else (ints mixed with floats, huge ints) an object array of the numbers.
    ``types``: the element types of a flat list, when the caller has them already."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values
    if types is not None:
        pass
    elif isinstance(values, list) and values and not isinstance(values[0], list):
        types = set(map(type, values))  # a flat list (the common case): no object array first
    else:
        values = np.asarray(values, dtype=object)
        types = set(map(type, values.reshape(-1).tolist()))
    if types == {float}:
        return np.array(values, dtype=np.float64)
    if types == {int}:
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pass
    return np.array(values, dtype=object)


def as_float(values) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float64)


def default_block_axis(channel_axis: int, rank: int) -> int:
    """The input-channel axis of a weight whose output channels lie on ``channel_axis``:
    Conv [out, in, ...] 0 -> 1; ConvTranspose [in, out, ...], MatMul / Gemm [in, out] -> 0."""
    return 1 if channel_axis % rank == 0 else 0


@dataclass(eq=False)
class TensorEncoding:
    """One tensor's encoding (see the module docstring for the fields' shapes)."""

    kind: str
    bitwidth: int  # LPBQ: the weights' (compressed) width
    dtype: str = "int"  # "int" or "float"
    symmetric: bool | None = None  # None: the file does not say (2.x); inferred from offsets
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None
    min: np.ndarray | None = None  # 0.6.1 only (the others do not store them)
    max: np.ndarray | None = None
    block_size: int | None = None
    per_block_int_scale: np.ndarray | None = None  # LPBQ, (C, nb)
    decompressed_bitwidth: int | None = None  # LPBQ: 1.0.0 "bw" (2.x does not store it)
    channel_axis: int | None = None  # axis of the channels in the tensor
    block_axis: int | None = None  # axis the blocks run along (per-block, LPBQ)
    rank: int | None = None  # rank of the tensor (2.x nests per-block scales in its layout)
    section: str | None = None  # "activation" / "param" in 0.6.1 and 1.0.0 files; None in 2.x
    signed: bool | None = None  # 2.x output_dtype int (True) or uint (False)
    extras: dict = field(default_factory=dict)  # unknown fields of the entry, as read
    channel_extras: tuple[dict, ...] | None = None  # 0.6.1: unknown fields of each channel's dict
    style: dict = field(default_factory=dict)  # {"version": ..., "literals": {...}, "absent": [...], ...}

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown encoding kind {self.kind!r}; one of {KINDS}")

    # -- what it holds ------------------------------------------------------------------
    @property
    def channels(self) -> int | None:
        """Number of channels; None for per-tensor / float and unresolved 1.0.0 per-block."""
        if self.kind in ("per_channel", "lpbq"):
            return int(self.scale.shape[0])
        if self.kind == "per_block" and self.scale.ndim == 2:
            return int(self.scale.shape[0])
        return None

    @property
    def blocks(self) -> int | None:
        """Blocks per channel (per-block, LPBQ), when known."""
        grid = self.per_block_int_scale if self.kind == "lpbq" else self.scale
        if self.kind in BLOCKED and grid.ndim == 2:
            return int(grid.shape[1])
        return None

    @property
    def is_quantized(self) -> bool:
        return self.kind != "float"

    def inferred_symmetric(self) -> bool:
        """``symmetric`` as stated, or else implied. 2.x files do not say: there a signed
        entry whose zero points are all zero is symmetric (weights), an unsigned one is not
        (aimet-onnx exports activations unsigned and computes them asymmetric by default);
        per-block and LPBQ always are."""
        if self.symmetric is not None:
            return self.symmetric
        if self.kind in BLOCKED:
            return True
        if self.kind == "float" or self.signed is False:
            return False
        return bool(np.all(as_float(self.offset) == -(2.0 ** (self.bitwidth - 1))))

    # -- new entries derived from this one (this one is never changed) ------------------
    def copy(self) -> TensorEncoding:
        """An independent copy. The arrays hold immutable Python numbers, so copying the
        arrays is enough (copy.deepcopy visited every number: most of the time of a large
        file's conversion)."""
        new = copy.copy(self)
        for name in _ARRAYS:
            value = getattr(self, name)
            if value is not None:
                setattr(new, name, value.copy())
        new.extras = copy.deepcopy(self.extras) if self.extras else {}
        if self.channel_extras is not None:
            new.channel_extras = tuple(copy.deepcopy(d) if d else {} for d in self.channel_extras)
        new.style = copy.deepcopy(self.style)
        return new

    def slice_channels(self, start: int, stop: int, *, channels: int | None = None) -> TensorEncoding:
        """The encoding of channels ``start:stop`` (a head's contiguous run of output channels).

        Per-channel lists, per-block and LPBQ rows (2.x nested scales: along the channel axis)
        are sliced; per-tensor and float encodings are returned unchanged (a slice of a tensor
        quantizes exactly as the whole). ``channels``: the tensor's channel count, needed only
        for 1.0.0 per-block entries read without a model.
        """
        return self.take_channels(range(start, stop), channels=channels)

    def take_channels(self, indices: Iterable[int], *, channels: int | None = None) -> TensorEncoding:
        """Like ``slice_channels`` for any channel indices, in the order given."""
        if self.kind in ("float", "per_tensor"):
            return self.copy()
        enc = self.with_channels(channels) if channels is not None else self
        count = enc.channels
        if count is None:
            raise ValueError(
                "this 1.0.0 per-block encoding does not store its channel count: bind the model "
                "(EncodingSet.bind) or pass channels="
            )
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= count:
            raise IndexError(f"channels {idx.tolist()[:8]} out of range for {count} channels")

        def take(a):
            return None if a is None or np.ndim(a) == 0 else a[idx]

        sliced = enc.copy()
        sliced.scale, sliced.offset = take(enc.scale), take(enc.offset)
        sliced.min, sliced.max = take(enc.min), take(enc.max)
        sliced.per_block_int_scale = take(enc.per_block_int_scale)
        if enc.channel_extras is not None and len(enc.channel_extras) == count:
            sliced.channel_extras = tuple(copy.deepcopy(enc.channel_extras[i]) for i in idx)
        return sliced

    def with_channels(self, channels: int) -> TensorEncoding:
        """A 1.0.0 per-block entry with its flat (C*nb,) scales shaped (C, nb) (files of that
        version store them channel-major without the count); other entries: checked and
        returned as they are."""
        if self.kind != "per_block" or self.scale.ndim == 2:
            if self.channels is not None and self.channels != channels:
                raise ValueError(f"{self.channels} channels in the encoding, {channels} given")
            return self
        if channels <= 0 or self.scale.size % channels:
            raise ValueError(f"{self.scale.size} per-block scales do not split into {channels} channels")
        grid = self.copy()
        grid.scale = self.scale.reshape(channels, -1)
        grid.offset = self.offset.reshape(channels, -1) if self.offset is not None else None
        return grid

    def move_channel_axis(self, channel_axis: int, *, rank: int, block_axis: int | None = None) -> TensorEncoding:
        """The encoding of the same values relaid out so that channels lie on ``channel_axis``
        of a rank-``rank`` tensor (a MatMul weight [in, out] -> Conv weight [out, in, 1, 1]:
        ``move_channel_axis(0, rank=4)``). Blocks follow the input-channel axis unless
        ``block_axis`` says otherwise. The channel-ordered lists do not change: 2.x files
        write the new axes (and re-nest per-block scales), 1.0.0 files store per-block scales
        channel-major whatever the layout, 0.6.1 and per-tensor entries store no axis."""
        if self.kind in ("float", "per_tensor"):
            return self.copy()
        moved = self.copy()
        moved.rank = rank
        moved.channel_axis = channel_axis % rank
        if self.kind in BLOCKED:
            moved.block_axis = (block_axis if block_axis is not None else default_block_axis(channel_axis, rank)) % rank
            if moved.block_axis == moved.channel_axis:
                raise ValueError("the block axis must differ from the channel axis")
        return moved

    def to_quant(self, *, channel_axis: int | None = None, shape: Sequence[int] | None = None) -> QuantEncoding:
        """The numeric form (refimpl.quant.QuantEncoding): see ``to_quant`` below."""
        return to_quant(self, channel_axis=channel_axis, shape=shape)

    def __repr__(self) -> str:
        parts = [self.kind, f"bw={self.bitwidth}"]
        if self.channels is not None:
            parts.append(f"C={self.channels}")
        if self.block_size:
            parts.append(f"block={self.block_size}")
        if self.channel_axis is not None:
            parts.append(f"axis={self.channel_axis}")
        if self.section:
            parts.append(self.section)
        return f"TensorEncoding({', '.join(parts)})"


@dataclass(eq=False)
class EncodingSet:
    """Every encoding of one file, by tensor name, plus the file's other top-level keys."""

    version: str
    tensors: dict[str, TensorEncoding] = field(default_factory=dict)
    top: dict = field(default_factory=dict)  # quantizer_args, excluded_layers, producer, unknown keys
    source: str = OBJECT_SOURCE  # the file it was read from (error messages)
    key_order: tuple[str, ...] = ()  # top-level keys in the order the file wrote them

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorEncoding:
        return self.tensors[name]

    def __len__(self) -> int:
        return len(self.tensors)

    def clone(self) -> EncodingSet:
        return EncodingSet(self.version, {name: enc.copy() for name, enc in self.tensors.items()}, copy.deepcopy(self.top),
                           self.source, self.key_order)

    # -- editing (in place; each returns the entry it placed) ---------------------------
    def copy(self, name: str, new_name: str) -> TensorEncoding:
        """``name``'s encoding also under ``new_name`` (a head's piece of an activation)."""
        return self._place(new_name, self.tensors[name].copy())

    def slice(self, name: str, new_name: str, start: int, stop: int, *, channels: int | None = None) -> TensorEncoding:
        """Channels ``start:stop`` of ``name``'s encoding under ``new_name`` (a head's weight)."""
        return self._place(new_name, self.tensors[name].slice_channels(start, stop, channels=channels))

    def take(self, name: str, new_name: str, indices: Iterable[int], *, channels: int | None = None) -> TensorEncoding:
        return self._place(new_name, self.tensors[name].take_channels(indices, channels=channels))

    def move_channel_axis(self, name: str, channel_axis: int, *, rank: int, block_axis: int | None = None) -> TensorEncoding:
        return self._place(name, self.tensors[name].move_channel_axis(channel_axis, rank=rank, block_axis=block_axis))

    def rename(self, old: str, new: str) -> TensorEncoding:
        enc = self.tensors.pop(old)
        return self._place(new, enc)

    def remove(self, name: str) -> TensorEncoding | None:
        return self.tensors.pop(name, None)

    def _place(self, name: str, enc: TensorEncoding) -> TensorEncoding:
        self.tensors[name] = enc
        return enc


def to_quant(enc: TensorEncoding, *, channel_axis: int | None = None, shape: Sequence[int] | None = None) -> QuantEncoding:
    """The numeric form of ``enc`` for a tensor of ``shape`` whose output channels lie on
    ``channel_axis`` (both needed only for what the file does not store: axes in 0.6.1 /
    1.0.0, the channel count of 1.0.0 per-block entries)."""
    if enc.kind == "float":
        return QuantEncoding("float", enc.bitwidth, False, np.zeros(()), np.zeros(()))
    symmetric = enc.inferred_symmetric()
    if enc.kind == "per_tensor":
        return QuantEncoding("int", enc.bitwidth, symmetric, as_float(enc.scale), as_float(enc.offset))
    rank = len(shape) if shape is not None else enc.rank
    axis = enc.channel_axis if enc.channel_axis is not None else channel_axis
    if axis is None:
        raise ValueError("the channel axis is not in the file: pass channel_axis (see channel_axis_of)")
    if rank is not None:
        axis %= rank
    if shape is not None and enc.channels is not None and shape[axis] != enc.channels:
        raise ValueError(f"{enc.channels} channels in the encoding, {shape[axis]} on axis {axis} of {list(shape)}")
    if enc.kind == "per_channel":
        return QuantEncoding("int", enc.bitwidth, symmetric, as_float(enc.scale), as_float(enc.offset), axis=axis)
    if rank is None:
        raise ValueError("a per-block encoding needs the tensor's shape")
    block_axis = (enc.block_axis if enc.block_axis is not None else default_block_axis(axis, rank)) % rank
    if enc.kind == "per_block":
        grid = enc.with_channels(shape[axis]) if enc.channels is None and shape is not None else enc
        if grid.channels is None:
            raise ValueError("a 1.0.0 per-block encoding needs the tensor's shape")
        scale, offset = as_float(grid.scale), as_float(grid.offset)
    else:
        scale = (as_float(enc.per_block_int_scale).astype(np.float32) * as_float(enc.scale).astype(np.float32)[:, None]).astype(np.float64)
        offset = np.full(scale.shape, -(2.0 ** (enc.bitwidth - 1)))
    return QuantEncoding("int", enc.bitwidth, True, scale, offset, axis=axis, block_axis=block_axis, block_size=enc.block_size)
