"""Past key/value inputs and present outputs."""

from __future__ import annotations

from fuzz.builder.base import BuilderBase, dims


class CacheMixin(BuilderBase):
    def _past(self, k: str, v: str, layer: int, key_transposed: bool) -> tuple[str, str, bool]:
        cfg, g = self.cfg, self.g
        pk, pv = f"past_key_{layer}", f"past_value_{layer}"
        if cfg.past_kv == "full_transposed_key":
            kt = k if key_transposed else g.transpose(k, [0, 1, 3, 2])
            full_k = g.op("Concat", [pk, kt], axis=3)
            full_v = g.op("Concat", [pv, v], axis=2)
            self._present(layer, full_k, full_v)
            return full_k, full_v, True
        if key_transposed:  # a fused K^T, but the cache stores keys [.., P, D]
            k = g.transpose(k, [0, 1, 3, 2])
        full_k = g.op("Concat", [pk, k], axis=2)
        full_v = g.op("Concat", [pv, v], axis=2)
        if cfg.past_kv == "new_only":
            self._present(layer, k, v)
        else:
            self._present(layer, full_k, full_v)
        return full_k, full_v, False

    def _present_shapes(self) -> tuple[list, list]:
        cfg = self.cfg
        length = "seq" if cfg.past_kv == "new_only" else "total"
        key = dims(cfg, "batch", cfg.kv_heads, cfg.d, length) if cfg.past_kv == "full_transposed_key" else dims(cfg, "batch", cfg.kv_heads, length, cfg.d)
        return key, dims(cfg, "batch", cfg.kv_heads, length, cfg.d)

    def _present(self, layer: int, k: str, v: str) -> None:
        g = self.g
        shapes = self._present_shapes()
        for (name, value), shape in zip(((f"present_key_{layer}", k), (f"present_value_{layer}", v)), shapes):
            g.op("Identity", [value], outputs=[name])
            g.output(name, self.dt, shape)
