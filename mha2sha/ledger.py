"""The conversion ledger: the one place that says what became of every tensor.

Every stage that changes the graph (the split, linear->conv, --optimize-o-proj,
--kv-cache-io head-major, ...) *appends* entries here; no stage edits another's entries.
Everything written about the conversion afterwards (the name mapping, the encodings, the LoRA
weight map, the verifier's correspondence file, the input lists) is a function of
``(original model, converted model, ledger)``: it reads the ledger's views, which apply the
entries in the order they were appended.

Entries (frozen; one class per kind of fact):

- ``TensorPieces(original, pieces, stage, block)``: the MHA tensor ``original`` is stood for
  by the SHA tensors ``pieces`` (per-head pieces from the split; Conv layout tensors from
  linear->conv).
- ``WeightSlice(source, target, axis, indices, source_shape, block)``: the initializer
  ``target`` is ``np.take(source, indices, axis)`` (``axis`` -1: a copy of the whole source).
- ``WeightRelayout(source, target, old_axis, new_axis)``: ``target`` is ``source`` laid out
  for a 1x1 Conv ([O, I, 1, 1]); its output-channel axis moved from ``old_axis`` to ``new_axis``.
- ``WeightRenamed(source, target)``: the same values under another name (a Conv bias).
- ``BlockBoundary(block, inputs, outputs)``: a split block as a standalone function, named by
  tensors both models have.
- ``BoundaryMoved(block, old, new, stage)``: a later pass removed the boundary tensor ``old``;
  ``new`` (a tensor both models have) is where the block is compared now.
- ``CacheSplit(block, original, kind, axis, names, indices)``: a graph input/output replaced by
  one tensor per (kv) head, ``names[i] = np.take(original, indices[i], axis)``.
- ``CacheLayout(block, original, layout)``: a later pass changed how a block's split cache
  appears at the graph boundary ("head_major": one tensor named ``original`` holding the pieces stacked in
  head order on a new axis 0; mha2sha.passes.head_major_io).

A pass is ``run(model, ledger, ...) -> PassResult(changed, report)`` (the onnx_ir pass
convention, plus the ledger it appends to and a report for the verification report).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BlockBoundary",
    "BlockView",
    "BoundaryMoved",
    "CacheLayout",
    "CacheSplit",
    "Ledger",
    "PassResult",
    "TensorPieces",
    "WeightRelayout",
    "WeightRenamed",
    "WeightSlice",
]


@dataclass(frozen=True)
class TensorPieces:
    original: str
    pieces: tuple[str, ...]
    stage: str  # "split", "linear_to_conv", ...
    block: str | None = None


@dataclass(frozen=True)
class WeightSlice:
    source: str
    target: str
    axis: int  # -1: the whole source, copied
    indices: tuple[int, ...]
    source_shape: tuple[int, ...]
    block: str | None = None


@dataclass(frozen=True)
class WeightRelayout:
    source: str
    target: str
    old_axis: int
    new_axis: int


@dataclass(frozen=True)
class WeightRenamed:
    source: str
    target: str


@dataclass(frozen=True)
class BlockBoundary:
    block: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class BoundaryMoved:
    block: str
    old: str
    new: str
    stage: str


@dataclass(frozen=True)
class CacheSplit:
    block: str
    original: str
    kind: str  # "input" or "output"
    axis: int
    names: tuple[str, ...]
    indices: tuple[int, ...]
    graph_layout: str = "pieces"  # as the split left it; the views apply later CacheLayout entries


@dataclass(frozen=True)
class CacheLayout:
    block: str
    original: str
    layout: str  # "head_major"


@dataclass(frozen=True)
class BlockView:
    """A block as the ledger says it is now: boundary moves and cache layouts applied."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    cache_splits: tuple[CacheSplit, ...]


@dataclass
class PassResult:
    """What a pass did: ``changed`` (onnx_ir's ``modified``) and its section of the report."""

    changed: bool
    report: Any = None


@dataclass
class Ledger:
    """Append-only list of entries, and the views the consumers read (see the module docstring)."""

    _entries: list = field(default_factory=list)
    _views: dict = field(default_factory=dict, repr=False)  # cached views, dropped on append

    @property
    def entries(self) -> tuple:
        return tuple(self._entries)

    def append(self, entry) -> None:
        self._entries.append(entry)
        self._views.clear()

    def extend(self, entries) -> None:
        self._entries.extend(entries)
        self._views.clear()

    def _of(self, kind) -> list:
        return [e for e in self._entries if isinstance(e, kind)]

    def _view(self, key, build):
        if key not in self._views:
            self._views[key] = build()
        return self._views[key]

    # --- views ------------------------------------------------------------------------------
    def pieces(self, stage: str | None = None) -> dict[str, list[str]]:
        """MHA tensor -> the tensors standing for it, in the order appended, each once."""

        def build():
            out: dict[str, list[str]] = {}
            seen: dict[str, set[str]] = {}
            for e in self._of(TensorPieces):
                if stage is not None and e.stage != stage:
                    continue
                names = out.setdefault(e.original, [])
                members = seen.setdefault(e.original, set())
                for p in e.pieces:
                    if p not in members:
                        members.add(p)
                        names.append(p)
            return out

        return self._view(("pieces", stage), build)

    def weight_slices(self) -> dict[str, list[WeightSlice]]:
        """Source initializer -> its slices, in the order appended."""

        def build():
            out: dict[str, list[WeightSlice]] = {}
            for e in self._of(WeightSlice):
                out.setdefault(e.source, []).append(e)
            return out

        return self._view("weight_slices", build)

    def relayouts(self) -> dict[str, WeightRelayout]:
        return self._view("relayouts", lambda: {e.source: e for e in self._of(WeightRelayout)})

    def renamed(self) -> dict[str, str]:
        return self._view("renamed", lambda: {e.source: e.target for e in self._of(WeightRenamed)})

    def cache_splits(self) -> list[CacheSplit]:
        """Every split cache input/output, with its current graph layout."""

        def build():
            layouts = {(e.block, e.original): e.layout for e in self._of(CacheLayout)}
            return [dataclasses.replace(s, graph_layout=layouts[(s.block, s.original)]) if (s.block, s.original) in layouts else s
                    for s in self._of(CacheSplit)]

        return self._view("cache_splits", build)

    def blocks(self) -> list[BlockView]:
        """The split blocks in the order they were split, boundaries as they are now."""

        def build():
            moves: dict[tuple[str, str], str] = {}
            for e in self._of(BoundaryMoved):
                moves[(e.block, e.old)] = e.new
            caches: dict[str, list[CacheSplit]] = {}
            for s in self.cache_splits():
                caches.setdefault(s.block, []).append(s)
            out = []
            for b in self._of(BlockBoundary):
                outputs = tuple(moves.get((b.block, n), n) for n in b.outputs)
                out.append(BlockView(b.block, b.inputs, outputs, tuple(caches.get(b.block, ()))))
            return out

        return self._view("blocks", build)

    def name_mapping(self) -> dict:
        """``{"activation_encodings": {mha: [sha...]}, "param_encodings": {mha: [sha...]}}``:
        the pieces of every tensor and the slices of every weight (mha_to_sha_encodings_names.json)."""
        params: dict[str, list[str]] = {}
        for source, slices in self.weight_slices().items():
            targets = params.setdefault(source, [])
            for s in slices:
                if s.target not in targets:
                    targets.append(s.target)
        activations = {k: list(v) for k, v in self.pieces().items()}
        return {"activation_encodings": activations, "param_encodings": params}
