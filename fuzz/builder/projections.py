"""Linear layers as exporters write them: MatMul (+bias), Gemm on 2-D input, 1x1 Conv, LoRA."""

from __future__ import annotations

import numpy as np

from fuzz.builder.base import BuilderBase


class ProjectionsMixin(BuilderBase):
    def project(self, x: str, w: np.ndarray, b: np.ndarray | None, role: str, lora=None, alphas=None) -> str:
        """[.., in] -> [.., out] as the config's exporter writes a linear layer."""
        cfg, g = self.cfg, self.g
        old = g.scope
        g.scope = f"{old}/{role}"
        out_ch = w.shape[1]
        adaptors = list(zip(lora or [], alphas or []))
        if cfg.layout == "nchw":
            y = g.op("Conv", [x, self.w(w.T.reshape(out_ch, -1, 1, 1), "weight")] + ([self.w(b, "bias")] if b is not None else []), role="Conv")
            y = self._lora(x, y, adaptors, old, role, conv=True)
        elif cfg.layout == "mha_conv":
            x4 = g.transpose(g.reshape(x, [1, 1, -1, w.shape[0]]), [0, 3, 2, 1])
            y4 = g.op("Conv", [x4, self.w(w.T.reshape(out_ch, -1, 1, 1), "weight")] + ([self.w(b, "bias")] if b is not None else []), role="Conv")
            y4 = self._lora(x4, y4, adaptors, old, role, conv=True)  # converted LoRA: 1x1 Convs too
            y = g.reshape(g.transpose(y4, [0, 3, 2, 1]), self._back_shape(x, out_ch))
        elif cfg.projection in ("gemm", "gemm_transb"):
            x2 = g.reshape(x, [-1, w.shape[0]])
            trans = cfg.projection == "gemm_transb"
            weight = self.w(w.T if trans else w, "weight")
            inputs = [x2, weight] + ([self.w(b, "bias")] if b is not None else [])
            y = g.reshape(g.op("Gemm", inputs, transB=int(trans), role="Gemm"), self._back_shape(x, out_ch))
        else:
            y = g.op("MatMul", [x, self.w(w, "weight")], role="MatMul")
            if b is not None:
                y = g.op("Add", [y, self.w(b, "bias")], role="Add")
            y = self._lora(x, y, adaptors, old, role, conv=False)
        g.scope = old
        return y

    def _lora(self, x: str, y: str, adaptors, scope: str, role: str, *, conv: bool) -> str:
        """y + alpha * B(A(x)) per adaptor; MatMuls [in, r] / [r, out], or 1x1 Convs
        [r, in, 1, 1] / [out, r, 1, 1] on channel-first activations."""
        g = self.g
        for k, (adaptor, alpha) in enumerate(adaptors):
            g.scope = f"{scope}/{role}/lora_{k}"
            if conv:
                a = self.w(adaptor.a.T.reshape(adaptor.a.shape[1], -1, 1, 1), "lora_A.weight")
                b = self.w(adaptor.b.T.reshape(adaptor.b.shape[1], -1, 1, 1), "lora_B.weight")
                xab = g.op("Conv", [g.op("Conv", [x, a]), b])
            else:
                xab = g.op("MatMul", [g.op("MatMul", [x, self.w(adaptor.a, "lora_A.weight")]), self.w(adaptor.b, "lora_B.weight")])
            y = g.op("Add", [y, g.op("Mul", [xab, alpha])])
        return y

    def _back_shape(self, x: str, out_ch: int) -> list[int] | str:
        """Target shape [B, S, out] after a 2-D/4-D detour: static, or from Shape(x)."""
        cfg, g = self.cfg, self.g
        if not cfg.dynamic:
            source_len = cfg.text_len if cfg.joint_attention else cfg.t
            return [cfg.batch, cfg.seq if x != self.cross_source else source_len, out_ch]
        lead = g.op("Shape", [x], start=0, end=2)
        return g.op("Concat", [lead, g.ints([out_ch])], axis=0)
