"""refimpl's errors: one base class, and the two a caller is expected to handle."""

from __future__ import annotations


class RefimplError(Exception):
    """Base of every error refimpl raises on purpose (bad model, bad feed, failing node)."""


class UnsupportedOpError(RefimplError):
    """The model uses an operator (or a form of one) that refimpl does not implement."""

    def __init__(self, op_type: str, domain: str, opset: int, node_name: str, detail: str = ""):
        self.op_type, self.domain, self.opset, self.node_name = op_type, domain or "ai.onnx", opset, node_name
        where = f"node {node_name!r}" if node_name else "an unnamed node"
        super().__init__(
            f"unsupported op {self.domain}::{op_type} (opset {opset}) at {where}" + (f": {detail}" if detail else "")
        )


class FeedError(RefimplError):
    """A graph input is missing from the feeds, or fed with the wrong rank, shape or type."""
