"""State shared by the builder's pieces: the config, the parameters, the graph under
construction, and the dimension helper."""

from __future__ import annotations

import numpy as np

from fuzz.config import AttentionConfig
from fuzz.graph import GraphBuilder
from fuzz.params import NORM_EPS, ModelParams

EPS = NORM_EPS


def dims(cfg: AttentionConfig, *sizes):
    """Static sizes, or the symbolic names of batch / sequence / past when dynamic."""
    names = {"batch": cfg.batch, "seq": cfg.seq, "past": cfg.past, "total": cfg.t, "kv_seq": cfg.text_len if cfg.joint_attention else cfg.t}
    return [(s if cfg.dynamic else names[s]) if isinstance(s, str) else s for s in sizes]


class BuilderBase:
    """One model being built. The mixins (layers, projections, heads, rope, core, cache) add
    the graph pieces; each reads ``self.cfg`` / ``self.p`` and appends to ``self.g``."""

    def __init__(self, cfg: AttentionConfig, params: ModelParams):
        self.cfg = cfg
        self.p = params
        self.dt = np.float16 if cfg.dtype == "float16" else np.float32
        self.g = GraphBuilder(opset=cfg.opset, opaque=cfg.names == "opaque", dtype=self.dt)
        self.rope_cos = self.rope_sin = None
        self.cross_source: str | None = None
        self.padding_mask_name: str | None = None

    def w(self, array: np.ndarray, role: str) -> str:
        """A parameter initializer in the model dtype."""
        return self.g.const(array.astype(self.dt), role, as_weight=True)
