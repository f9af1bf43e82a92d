"""Which tensors of the SHA model stand for which tensors of the MHA model: the schema the
verifier reads (``correspondence.json``), owned and documented here (docs/verification.md).

A correspondence lists, per attention block, the tensors the block reads and writes in both
models, so that the block can be cut out of each and fed the same values:

- ``inputs`` / ``outputs``: pairs ``[mha, sha]``; the SHA tensor holds exactly the MHA
  tensor's value (usually the same name; another tool may rename it).
- ``cache_splits``: graph inputs/outputs the SHA model has per (kv) head. ``original`` is
  the MHA tensor, ``axis`` its head axis, and ``indices[i]`` the head index the i-th SHA
  tensor holds. ``layout`` says how:

  - ``"pieces"``: ``names[i] == np.take(original, indices[i], axis)`` (the axis removed; with
    ``keepdims`` it is kept with size 1);
  - ``"head_major"``: one tensor ``names[0] == np.stack([take(original, i, axis) for i in
    indices], axis=0)``, heads first (the reference tool's ``[H, 1, P, D]`` for a ``[1, H, P,
    D]`` cache, mha2sha's ``--kv-cache-io head-major``).

The whole-model pairs (``graph``) say which SHA graph input/output stands for which MHA one;
names not listed there are paired by equal name or through the cache splits. The file is
JSON: ``{"format": FORMAT, "version": VERSION, "source": ..., "blocks": [...], "graph":
{...}}``. This module uses only numpy and the standard library.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "mha2sha.correspondence"
VERSION = 1
FILE_NAME = "correspondence.json"
LAYOUTS = ("pieces", "head_major")


class CorrespondenceError(ValueError):
    """A correspondence file that cannot be used (bad JSON, wrong format, bad fields)."""


@dataclass
class CacheSplit:
    original: str
    kind: str  # "input" or "output"
    axis: int
    names: list[str]
    indices: list[int]
    layout: str = "pieces"
    keepdims: bool = False

    def pieces(self, value: np.ndarray) -> dict[str, np.ndarray]:
        """The SHA tensors for the MHA tensor's ``value``."""
        if self.layout == "head_major":
            return {self.names[0]: np.stack([np.take(value, i, axis=self.axis) for i in self.indices], axis=0)}
        return {n: (np.take(value, [i], axis=self.axis) if self.keepdims else np.take(value, i, axis=self.axis))
                for n, i in zip(self.names, self.indices)}

    def merge(self, values: dict[str, np.ndarray]) -> np.ndarray | None:
        """The MHA tensor from the SHA tensors in ``values`` (None when some are missing)."""
        if not all(n in values for n in self.names):
            return None
        if self.layout == "head_major":
            stacked = values[self.names[0]]
            parts = [stacked[k] for k in range(stacked.shape[0])]
        else:
            parts = [np.squeeze(values[n], axis=self.axis) if self.keepdims else values[n] for n in self.names]
        ordered = [p for _, p in sorted(zip(self.indices, parts), key=lambda t: t[0])]
        return np.stack(ordered, axis=self.axis)


@dataclass
class BlockCorrespondence:
    """One attention block in both models."""

    name: str
    inputs: list[list[str]] = field(default_factory=list)  # [mha, sha]
    outputs: list[list[str]] = field(default_factory=list)
    cache_splits: list[CacheSplit] = field(default_factory=list)
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    features: dict = field(default_factory=dict)

    def _split_names(self, kind: str) -> tuple[list[str], list[str]]:
        mha, sha = [], []
        for s in self.cache_splits:
            if s.kind == kind:
                mha.append(s.original)
                sha.extend(s.names)
        return mha, sha

    @property
    def mha_inputs(self) -> list[str]:
        return list(dict.fromkeys([m for m, _ in self.inputs] + self._split_names("input")[0]))

    @property
    def sha_inputs(self) -> list[str]:
        return list(dict.fromkeys([s for _, s in self.inputs] + self._split_names("input")[1]))

    @property
    def mha_outputs(self) -> list[str]:
        return list(dict.fromkeys([m for m, _ in self.outputs] + self._split_names("output")[0]))

    @property
    def sha_outputs(self) -> list[str]:
        return list(dict.fromkeys([s for _, s in self.outputs] + self._split_names("output")[1]))

    def sha_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The SHA block's inputs from the MHA block's ``feeds`` (keyed by MHA name)."""
        out: dict[str, np.ndarray] = {}
        for mha, sha in self.inputs:
            if mha in feeds:
                out[sha] = feeds[mha]
        for s in self.cache_splits:
            if s.kind == "input" and s.original in feeds:
                out.update(s.pieces(feeds[s.original]))
        return out

    def mha_values(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The SHA block's outputs in ``values``, keyed and laid out as the MHA block's."""
        out: dict[str, np.ndarray] = {}
        for mha, sha in self.outputs:
            if sha in values:
                out[mha] = values[sha]
        for s in self.cache_splits:
            if s.kind == "output":
                merged = s.merge(values)
                if merged is not None:
                    out[s.original] = merged
        return out

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Correspondence:
    blocks: list[BlockCorrespondence] = field(default_factory=list)
    # Whole-model pairs [mha, sha] where names differ; caches come from the blocks' splits.
    graph_inputs: list[list[str]] = field(default_factory=list)
    graph_outputs: list[list[str]] = field(default_factory=list)
    source: str = ""  # who made it: "mha2sha <version>", "derived by structure", ...

    def cache_splits(self, kind: str) -> list[CacheSplit]:
        return [s for b in self.blocks for s in b.cache_splits if s.kind == kind]

    def graph_feeds(self, feeds: dict[str, np.ndarray], sha_input_names: list[str]) -> dict[str, np.ndarray]:
        """The SHA model's graph inputs from the MHA model's ``feeds``."""
        available: dict[str, np.ndarray] = {}
        for s in self.cache_splits("input"):
            if s.original in feeds:
                available.update(s.pieces(feeds[s.original]))
        renamed = {sha: mha for mha, sha in self.graph_inputs}
        out = {}
        for name in sha_input_names:
            if name in available:
                out[name] = available[name]
            elif renamed.get(name) in feeds:
                out[name] = feeds[renamed[name]]
            elif name in feeds:
                out[name] = feeds[name]
        return out

    def graph_values(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The SHA model's graph outputs keyed and laid out as the MHA model's."""
        split_names = {n for s in self.cache_splits("output") for n in s.names}
        out = {k: v for k, v in values.items() if k not in split_names}
        for mha, sha in self.graph_outputs:
            if sha in values:
                out[mha] = values[sha]
        for s in self.cache_splits("output"):
            merged = s.merge(values)
            if merged is not None:
                out[s.original] = merged
        return out

    def as_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "source": self.source,
                "blocks": [b.as_dict() for b in self.blocks],
                "graph": {"inputs": self.graph_inputs, "outputs": self.graph_outputs}}


def _pairs(value, where: str) -> list[list[str]]:
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in value):
        raise CorrespondenceError(f"{where}: expected a list of [mha, sha] name pairs")
    return [list(p) for p in value]


def _split(d, where: str) -> CacheSplit:
    if not isinstance(d, dict):
        raise CorrespondenceError(f"{where}: expected an object")
    try:
        split = CacheSplit(original=str(d["original"]), kind=str(d["kind"]), axis=int(d["axis"]), names=[str(n) for n in d["names"]],
                           indices=[int(i) for i in d["indices"]], layout=str(d.get("layout", "pieces")), keepdims=bool(d.get("keepdims", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise CorrespondenceError(f"{where}: missing or bad field {exc}") from None
    if split.kind not in ("input", "output"):
        raise CorrespondenceError(f"{where}: kind must be 'input' or 'output', not {split.kind!r}")
    if split.layout not in LAYOUTS:
        raise CorrespondenceError(f"{where}: layout must be one of {', '.join(LAYOUTS)}, not {split.layout!r}")
    expected = 1 if split.layout == "head_major" else len(split.indices)
    if len(split.names) != expected or sorted(split.indices) != list(range(len(split.indices))):
        raise CorrespondenceError(f"{where}: {len(split.names)} names for {len(split.indices)} head indices "
                                  f"(indices must be 0..n-1 in some order; head_major has one name)")
    return split


def from_dict(data) -> Correspondence:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CorrespondenceError(f"not a correspondence file (expected \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise CorrespondenceError(f"correspondence version {data.get('version')!r} is not supported (this verifier reads {VERSION})")
    blocks = []
    for k, b in enumerate(data.get("blocks", [])):
        where = f"blocks[{k}]"
        if not isinstance(b, dict) or not isinstance(b.get("name"), str):
            raise CorrespondenceError(f"{where}: expected an object with a name")
        blocks.append(BlockCorrespondence(
            name=b["name"], inputs=_pairs(b.get("inputs", []), f"{where}.inputs"), outputs=_pairs(b.get("outputs", []), f"{where}.outputs"),
            cache_splits=[_split(s, f"{where}.cache_splits[{j}]") for j, s in enumerate(b.get("cache_splits", []))],
            heads=b.get("heads"), kv_heads=b.get("kv_heads"), head_dim=b.get("head_dim"), features=dict(b.get("features") or {})))
        if not blocks[-1].mha_outputs:
            raise CorrespondenceError(f"{where}: the block writes nothing (no outputs)")
    graph = data.get("graph") or {}
    return Correspondence(blocks, _pairs(graph.get("inputs", []), "graph.inputs"), _pairs(graph.get("outputs", []), "graph.outputs"),
                          str(data.get("source", "")))


def read(path: str | os.PathLike) -> Correspondence:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CorrespondenceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CorrespondenceError(f"{path}: not JSON: {exc}") from None
    try:
        return from_dict(data)
    except CorrespondenceError as exc:
        raise CorrespondenceError(f"{path}: {exc}") from None


def dumps(corr: Correspondence) -> str:
    return json.dumps(corr.as_dict(), indent=1)
