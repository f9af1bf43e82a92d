"""Build the ONNX graph of an AttentionConfig, op by op, the way exporters write it.

``build(config, seed=...)`` returns a BuiltModel: the ModelProto, the parameters by role,
a feed generator with valid value ranges, and the closed-form reference (fuzz.reference)
computed from the parameters, which is what the graph must equal.

The graph pieces live in one module per family (layers, projections, heads, rope, core,
cache), combined here into one builder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from fuzz.builder.cache import CacheMixin
from fuzz.builder.core import CoreMixin
from fuzz.builder.feeds import make_feeds
from fuzz.builder.heads import HeadsMixin
from fuzz.builder.layers import LayersMixin
from fuzz.builder.projections import ProjectionsMixin
from fuzz.builder.rope import RopeMixin
from fuzz.config import AttentionConfig
from fuzz.params import ModelParams, draw_params
from fuzz.reference import reference

__all__ = ["BuiltModel", "build", "make_feeds"]


class _ModelBuilder(LayersMixin, CoreMixin, CacheMixin, HeadsMixin, RopeMixin, ProjectionsMixin):
    """All graph pieces together; ``build()`` (LayersMixin) writes the whole model."""


@dataclass
class BuiltModel:
    config: AttentionConfig
    model: onnx.ModelProto
    params: ModelParams
    seed: int

    @property
    def np_dtype(self):
        return np.float16 if self.config.dtype == "float16" else np.float32

    def make_feeds(self, seed: int = 0) -> dict[str, np.ndarray]:
        return make_feeds(self.config, seed)

    def reference(self, feeds: dict[str, np.ndarray], *, dtype=np.float64) -> dict[str, np.ndarray]:
        return reference(self.config, self.params, feeds, dtype=dtype)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.graph.output]


def build(config: AttentionConfig, *, seed: int = 0, names: str | None = None, topo_shuffle: bool | None = None) -> BuiltModel:
    """Build ``config`` with parameters drawn from ``seed``; deterministic.

    ``names`` ("readable" / "opaque") and ``topo_shuffle`` override the config's ``names`` and
    ``shuffle`` (the parameters do not depend on either).
    """
    if names is not None:
        config = config.with_(names=names)
    if topo_shuffle is not None:
        config = config.with_(shuffle=topo_shuffle)
    config.validate()
    params = draw_params(config, seed)
    model = _ModelBuilder(config, params).build()
    return BuiltModel(config, model, params, seed)
