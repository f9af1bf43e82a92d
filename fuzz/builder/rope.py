"""Rotary position embedding in its exported forms."""

from __future__ import annotations

import numpy as np
import onnx

from fuzz.builder.base import BuilderBase


class RopeMixin(BuilderBase):
    def rope(self, x: str) -> str:
        cfg, g = self.cfg, self.g
        d, r = cfg.d, cfg.rotary_dim
        if cfg.rope == "rotary_op":
            attrs = {"rotary_embedding_dim": r} if r != d else {}
            cos, sin = self._rope_caches()
            return g.op("RotaryEmbedding", [x, cos, sin, "position_ids"], **attrs)
        rot, rest = (x, None) if r == d else (g.slice(x, 0, r, -1), g.slice(x, r, d, -1))
        cos, sin = self._cos_sin()
        half = r // 2
        if cfg.rope == "rotate_half":
            x1, x2 = g.slice(rot, 0, half, -1), g.slice(rot, half, r, -1)
            rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
            out = g.op("Add", [g.op("Mul", [rot, cos]), g.op("Mul", [rotated, sin])])
        elif cfg.rope == "half_split":
            x1, x2 = g.slice(rot, 0, half, -1), g.slice(rot, half, r, -1)
            a = g.op("Sub", [g.op("Mul", [x1, cos]), g.op("Mul", [x2, sin])])
            b = g.op("Add", [g.op("Mul", [x1, sin]), g.op("Mul", [x2, cos])])
            out = g.op("Concat", [a, b], axis=-1)
        else:  # interleaved pairs (2i, 2i+1)
            pairs = g.reshape(rot, [0, 0, 0, half, 2])
            x1 = g.op("Gather", [pairs, g.const(np.array(0, np.int64), "idx")], axis=-1)
            x2 = g.op("Gather", [pairs, g.const(np.array(1, np.int64), "idx")], axis=-1)
            a = g.op("Sub", [g.op("Mul", [x1, cos]), g.op("Mul", [x2, sin])])
            b = g.op("Add", [g.op("Mul", [x1, sin]), g.op("Mul", [x2, cos])])
            stacked = g.op("Concat", [g.unsqueeze(a, [-1]), g.unsqueeze(b, [-1])], axis=-1)
            out = g.reshape(stacked, [0, 0, 0, r])
        return out if rest is None else g.op("Concat", [out, rest], axis=-1)

    def _cos_sin(self) -> tuple[str, str]:
        if self.rope_cos is not None:
            return self.rope_cos, self.rope_sin
        cfg, g = self.cfg, self.g
        old, g.scope = g.scope, "/model/rotary_emb"
        if cfg.rope == "rotate_half":
            pos = g.op("Cast", ["position_ids"], to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dt)))
            freqs = g.op("Mul", [g.unsqueeze(pos, [-1]), g.const(self.p.inv_freq.astype(self.dt), "inv_freq")])
            emb = g.op("Concat", [freqs, freqs], axis=-1)
            cos, sin = g.op("Cos", [emb]), g.op("Sin", [emb])
        else:
            cos, sin = "cos", "sin"
        self.rope_cos, self.rope_sin = g.unsqueeze(cos, [1]), g.unsqueeze(sin, [1])
        g.scope = old
        return self.rope_cos, self.rope_sin

    def _rope_caches(self) -> tuple[str, str]:
        if self.rope_cos is None:
            positions = np.arange(self.p.rope_cache_positions)[:, None] * self.p.inv_freq
            self.rope_cos = self.g.const(np.cos(positions).astype(self.dt), "cos_cache")
            self.rope_sin = self.g.const(np.sin(positions).astype(self.dt), "sin_cache")
        return self.rope_cos, self.rope_sin
