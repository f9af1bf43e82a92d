"""The converter's side of verify.correspondence: what each split block reads and writes in
both models, written beside the outputs as ``correspondence.json`` for ``mha2sha verify
--correspondence`` (the schema is the verifier's; see docs/verification.md)."""

from __future__ import annotations

from pathlib import Path

from mha2sha.ledger import Ledger
from verify.correspondence import BlockCorrespondence, CacheSplit, Correspondence


def correspondence_from_ledger(ledger: Ledger, blocks, *, source: str = "mha2sha") -> Correspondence:
    """One block per split block of the ledger (``ledger.blocks()`` and the converted
    ``blocks`` (BlockReport) in the same order).

    The ledger names the block by SHA tensors; a per-head cache piece stands for a slice of the
    original input/output (its ``CacheSplit``), every other name is the same in both models.
    A head-major cache (``--kv-cache-io head-major``) is one graph tensor under the original
    name holding the pieces stacked in head order: the block reads and writes that tensor."""
    out = []
    for view, block in zip(ledger.blocks(), blocks):
        splits, pieces = [], set()
        for s in view.cache_splits:
            pieces.update(s.names)
            if s.graph_layout == "head_major":
                splits.append(CacheSplit(s.original, s.kind, s.axis, [s.original], sorted(s.indices), layout="head_major"))
            else:
                splits.append(CacheSplit(s.original, s.kind, s.axis, list(s.names), list(s.indices)))
        out.append(BlockCorrespondence(
            name=view.name,
            inputs=[[n, n] for n in view.inputs if n not in pieces],
            outputs=[[n, n] for n in view.outputs if n not in pieces],
            cache_splits=splits, heads=block.heads, kv_heads=block.kv_heads, head_dim=block.head_dim,
            features=dict(block.features)))
    return Correspondence(out, source=source)


def block_correspondence(original_path: str | Path, *, allow_hard_links: bool = False, **split_options) -> Correspondence:
    """The blocks of a model as mha2sha converts them (the converted model keeps these names)."""
    from mha2sha.graph.io import load_model
    from mha2sha.pipeline import split_model

    split = split_model(load_model(original_path, allow_hard_links=allow_hard_links).model, **split_options)
    return correspondence_from_ledger(split.ledger, split.converted)
