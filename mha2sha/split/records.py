"""What the split of one block did to tensor names: the splitter's own account, turned into
ledger entries once the block is split (split/apply.py, mha2sha/ledger.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["IOSplit", "ParamSlice", "SplitRecord"]


@dataclass
class ParamSlice:
    """A weight (or constant) sliced for one head: which source entries along which axis."""

    source: str
    target: str
    axis: int
    indices: tuple[int, ...]
    source_shape: tuple[int, ...]


@dataclass
class IOSplit:
    """A graph input or output replaced by one tensor per (kv) head.

    Head piece ``names[i]`` is ``np.take(original, indices[i], axis=axis)`` (the axis
    removed), so the original is ``np.stack(pieces, axis=axis)`` in this order.

    ``graph_layout`` says how the pieces appear at the graph's boundary: "pieces" (each piece
    is a graph input/output of its own) or "head_major" (one graph input/output named
    ``original`` holds ``np.stack(pieces in head order, axis=0)``; the pieces are tensors
    inside the graph: mha2sha.passes.head_major_io).
    """

    original: str
    kind: str  # "input" or "output"
    axis: int
    names: list[str]
    indices: list[int]
    graph_layout: str = "pieces"


@dataclass
class SplitRecord:
    """What the split did to tensor names, for encodings and verification."""

    block: str
    activations: dict[str, list[str]] = field(default_factory=dict)  # MHA tensor -> SHA tensors
    params: list[ParamSlice] = field(default_factory=list)
    # The block as a standalone function, named by tensors that both the MHA and the SHA
    # model have: what it reads (non-constant) and what it writes (heads reassembled).
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # Graph inputs/outputs replaced by one tensor per (kv) head (KV caches), by original name.
    io_splits: dict[str, IOSplit] = field(default_factory=dict)

    _members: dict[str, set[str]] = field(default_factory=dict, repr=False)  # activations as sets

    def add_activation(self, original: str, piece: str) -> None:
        members = self._members.setdefault(original, set())
        if piece not in members and piece != original:
            members.add(piece)
            self.activations.setdefault(original, []).append(piece)

    def rename_piece(self, old: str, new: str) -> None:
        for original, pieces in self.activations.items():
            members = self._members.get(original, set())
            if old in members:
                pieces[pieces.index(old)] = new
                members.discard(old)
                members.add(new)
