"""The attention core: scores, scaling, masks and biases, softmax guards, the opset-23 Attention op."""

from __future__ import annotations

import math

import numpy as np
import onnx

from fuzz.builder.base import EPS, BuilderBase
from fuzz.params import LayerParams


class CoreMixin(BuilderBase):
    def attention(self, lp: LayerParams, layer: int, x: str) -> str:
        cfg, g = self.cfg, self.g
        h, kv, d = cfg.heads, cfg.kv_heads, cfg.d
        g.scope = f"/model/layers.{layer}/self_attn"
        source = self.cross_source if cfg.cross_attention else x
        alphas = []
        if cfg.lora_rank:
            for k in range(cfg.lora_adaptors):
                if cfg.lora_alpha_input:
                    alphas.append(g.op("Mul", ["lora_alpha", g.scalar(float(k + 1))]) if k else "lora_alpha")
                else:
                    alphas.append(g.scalar(lp.lora_alpha[k], "lora_alpha"))
        if cfg.fused_qkv in ("split", "slice", "gather"):
            w = np.concatenate([lp.wq, lp.wk, lp.wv], axis=1)
            b = None if lp.bq is None else np.concatenate([lp.bq, lp.bk, lp.bv])
            qkv = self.project(x, w, b, "qkv_proj")
            sizes = [h * d, kv * d, kv * d]
            if cfg.fused_qkv == "split":
                q, k, v = g.split(qkv, sizes, axis=-1)
            elif cfg.fused_qkv == "slice":
                bounds = np.cumsum([0] + sizes)
                q, k, v = (g.slice(qkv, int(bounds[n]), int(bounds[n + 1]), -1) for n in range(3))
            elif cfg.fused_qkv == "gather":  # [B, S, 3, H, D] then Gather on the qkv axis
                five = g.reshape(qkv, [0, 0, 3, h, d])
                q, k, v = (g.reshape(g.op("Gather", [five, g.const(np.array(n, np.int64), "qkv_index")], axis=2), [0, 0, h * d]) for n in range(3))
        if cfg.fused_qkv == "gather_mid":  # Bloom: channels [H, 3, D], Gather on axis 3
            w = np.stack([m.reshape(-1, h, d) for m in (lp.wq, lp.wk, lp.wv)], axis=2).reshape(lp.wq.shape[0], -1)
            b = None if lp.bq is None else np.stack([m.reshape(h, d) for m in (lp.bq, lp.bk, lp.bv)], axis=1).reshape(-1)
            five = g.reshape(self.project(x, w, b, "query_key_value"), [0, 0, h, 3, d])
            q, k, v = (g.reshape(g.op("Gather", [five, g.const(np.array(n, np.int64), "qkv_index")], axis=3), [0, 0, h * d]) for n in range(3))
        elif cfg.fused_qkv == "grouped":  # Falcon: channels [KV, n + 2, D], q/k/v sliced on axis 3
            n = h // kv
            parts = [lp.wq.reshape(-1, kv, n, d), lp.wk.reshape(-1, kv, 1, d), lp.wv.reshape(-1, kv, 1, d)]
            w = np.concatenate(parts, axis=2).reshape(lp.wq.shape[0], -1)
            b = None if lp.bq is None else np.concatenate([lp.bq.reshape(kv, n, d), lp.bk.reshape(kv, 1, d), lp.bv.reshape(kv, 1, d)], axis=1).reshape(-1)
            five = g.reshape(self.project(x, w, b, "query_key_value"), [0, 0, kv, n + 2, d])
            q = g.reshape(g.slice(five, 0, n, 3), [0, 0, h * d])
            k = g.reshape(g.slice(five, n, n + 1, 3), [0, 0, kv * d])
            v = g.reshape(g.slice(five, n + 1, n + 2, 3), [0, 0, kv * d])
        elif cfg.fused_qkv == "none":
            q = self.project(x, lp.wq, lp.bq, "q_proj", lp.lora.get("q"), alphas)
            k = self.project(source, lp.wk, lp.bk, "k_proj", lp.lora.get("k"), alphas)
            v = self.project(source, lp.wv, lp.bv, "v_proj", lp.lora.get("v"), alphas)
        if cfg.qk_norm_full:  # OLMo-2: over H*D before the head split (the fused op where it exists)
            q, k = self.full_width_rms(q, lp.q_norm, "q_norm"), self.full_width_rms(k, lp.k_norm, "k_norm")
        if cfg.joint_attention:  # SD3: text q/k/v from their own projections, joined on the sequence axis
            txt = [self.split_heads(self.project(self.cross_source, wt, None, f"add_{r}_proj"), n, key=r == "k")
                   for r, wt, n in (("q", lp.txt_wq, h), ("k", lp.txt_wk, kv), ("v", lp.txt_wv, kv))]
        q = self.split_heads(q, h)
        key_transposed = cfg.layout == "nchw" or cfg.head_split == "fused_kt"
        k = self.split_heads(k, kv, key=True)
        v = self.split_heads(v, kv)
        if cfg.qk_norm and not cfg.qk_norm_full:
            q = self.rms(q, lp.q_norm, "q_norm")
            k = self.rms(k, lp.k_norm, "k_norm")
        if cfg.rope != "none":
            q, k = self.rope(q), self.rope(k)
        if cfg.joint_attention:
            q, k, v = (g.op("Concat", [a, b], axis=2) for a, b in zip((q, k, v), txt))
        if cfg.attention_op:
            return self._attention_op(q, k, v, layer)
        if cfg.has_past:
            k, v, key_transposed = self._past(k, v, layer, key_transposed)
        k = self.repeat_kv(k, key_transposed)
        v = self.repeat_kv(v, False)
        kt = k if key_transposed else g.transpose(k, [0, 1, 3, 2])
        if cfg.head_split == "folded":
            q, kt, v = self._fold(q, [cfg.seq, d], 0), self._fold(kt, [d, cfg.t], 1), self._fold(v, [cfg.t, d], 0)
        broadcast = cfg.gqa_repeat == "broadcast" and cfg.group > 1
        if broadcast:
            q = g.reshape(q, [0, kv, cfg.group, -1, d])
            kt, v = g.unsqueeze(kt, [2]), g.unsqueeze(v, [2])
        inv = 1.0 / math.sqrt(d)
        if cfg.scaling == "mul_q":
            q = g.op("Mul", [q, g.scalar(inv)])
        elif cfg.scaling == "mul_qk":
            q = g.op("Mul", [q, g.scalar(d**-0.25)])
            kt = g.op("Mul", [kt, g.scalar(d**-0.25)])
        scores = g.op("MatMul", [q, kt], role="MatMul")
        if cfg.scaling == "div_scores":
            scores = g.op("Div", [scores, g.scalar(math.sqrt(d))])
        elif cfg.scaling == "mul_scores":
            scores = g.op("Mul", [scores, g.scalar(inv)])
        elif cfg.scaling == "shape":
            dim = g.op("Gather", [g.op("Shape", [q]), g.const(np.array(-1, np.int64), "idx")], axis=0)
            sqrt = g.op("Sqrt", [g.op("Cast", [dim], to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dt)))])
            scores = g.op("Div", [scores, sqrt])
        terms = self.scores_bias(lp)
        folded_view = cfg.head_split == "folded" and cfg.folded_view and (terms or cfg.mask == "bool_input")
        if folded_view:  # BART / Whisper: masks and biases are added in a [B, H, S, T] view
            scores = self._scores_view(scores)
        for term in terms:
            if cfg.head_split == "folded" and not folded_view:
                term = g.reshape(term, [-1, cfg.seq, cfg.t])  # constants, static like the mask itself
            elif broadcast:
                if term in ("attention_mask", self.padding_mask_name):  # [B, 1, S|1, T]: no head axis
                    term = g.unsqueeze(term, [1])
                else:
                    term = g.reshape(g.op("Expand", [term, g.ints([1, h, 1, 1], "shape")]), [0, kv, -1, cfg.seq, cfg.t])
            scores = g.op("Add", [scores, term])
        if cfg.mask == "bool_input":
            mask = "attention_mask" if not broadcast else g.unsqueeze("attention_mask", [1])
            scores = g.op("Where", [mask, scores, g.scalar(cfg.mask_fill)])
        if folded_view:
            scores = self._scores_refold(scores)
        if cfg.softmax_cast:
            scores = g.op("Cast", [scores], to=onnx.TensorProto.FLOAT)
        probs = g.op("Softmax", [scores], axis=-1, role="Softmax")
        if cfg.softmax_cast:
            probs = g.op("Cast", [probs], to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dt)))
        if cfg.nan_guard:
            probs = g.op("Where", [g.op("IsNaN", [probs]), g.scalar(0.0), probs])
        if cfg.probs_view:  # Bloom TorchScript: heads folded into the batch after the softmax
            probs, v = self._fold(probs, [cfg.seq, cfg.t], 0), self._fold(v, [cfg.t, d], 0)
        out = g.op("MatMul", [probs, v], role="MatMul_1")
        if cfg.probs_view:
            out = self._unfold(out)
        if broadcast:
            out = g.reshape(out, [0, h, -1, d])
        if cfg.head_split == "folded":
            out = self._unfold(out)
        if cfg.joint_attention:  # image rows -> the block output; text rows pooled into it
            merged = self.merge_heads(out)
            img = g.slice(merged, 0, cfg.seq, 1)
            txt_rows = g.slice(merged, cfg.seq, cfg.t, 1)
            pooled = g.reduce_mean(g.op("MatMul", [txt_rows, self.w(lp.txt_wo, "to_add_out.weight")]), [1])
            return img, pooled
        return self.merge_heads(out)

    def full_width_rms(self, x: str, weight: np.ndarray, role: str) -> str:
        """RMSNorm over the last axis: the RMSNormalization op at opset 23, decomposed before."""
        if self.cfg.opset >= 23:
            return self.g.op("RMSNormalization", [x, self.w(weight, f"{role}.weight")], axis=-1, epsilon=EPS, role=role)
        return self.rms(x, weight, role)

    def scores_bias(self, lp: LayerParams) -> list[str]:
        """Additive terms on the scores: masks and biases, shaped [1|B, H|1, S, T]."""
        cfg, g = self.cfg, self.g
        s, t, fill = cfg.seq, cfg.t, cfg.mask_fill
        terms = []
        i = np.arange(s)[:, None] + (t - s)
        j = np.arange(t)[None, :]
        if cfg.mask in ("causal", "per_head"):
            terms.append(g.const(np.where(j <= i, 0.0, fill).astype(self.dt)[None, None], "causal_mask"))
        elif cfg.mask == "sliding_window":
            terms.append(g.const(np.where((j <= i) & (j > i - cfg.window), 0.0, fill).astype(self.dt)[None, None], "sliding_mask"))
        elif cfg.mask == "additive_input":
            terms.append("attention_mask")
        elif cfg.mask in ("padding_input", "causal_padding_input"):
            terms.append(self.padding_mask())
        if lp.per_head_mask is not None:
            terms.append(g.const(lp.per_head_mask[None].astype(self.dt), "head_bias"))
        if lp.alibi_slopes is not None:
            slopes = g.const(lp.alibi_slopes.reshape(1, -1, 1, 1).astype(self.dt), "alibi_slopes")
            terms.append(g.op("Mul", [slopes, g.const((j - i)[None, None].astype(self.dt), "alibi_distance")]))
        if lp.rel_table is not None:
            table = self.w(lp.rel_table, "relative_attention_bias.weight")
            gathered = g.op("Gather", [table, g.const(self.p.rel_buckets, "buckets")], axis=0)  # [S, T, H]
            terms.append(g.unsqueeze(g.transpose(gathered, [2, 0, 1]), [0]))
        return terms

    def padding_mask(self) -> str:
        """The additive mask from the int64 [B, T] padding input, built once for all layers:
        (1 - mask) * fill as [B, 1, 1, T] (BERT's extended mask), plus the causal constant
        [1, 1, S, T] for causal_padding_input (HF decoders)."""
        if self.padding_mask_name is not None:
            return self.padding_mask_name
        cfg, g = self.cfg, self.g
        old, g.scope = g.scope, "/model"
        keep = g.unsqueeze(g.op("Cast", ["attention_mask"], to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dt))), [1, 2])
        mask = g.op("Mul", [g.op("Sub", [g.scalar(1.0), keep]), g.scalar(cfg.mask_fill)])
        if cfg.mask == "causal_padding_input":
            i = np.arange(cfg.seq)[:, None] + (cfg.t - cfg.seq)
            j = np.arange(cfg.t)[None, :]
            causal = g.const(np.where(j <= i, 0.0, cfg.mask_fill).astype(self.dt)[None, None], "causal_mask")
            mask = g.op("Add", [mask, causal])
        self.padding_mask_name = mask
        g.scope = old
        return mask

    def _rows(self, mask: str) -> str:
        """A [B, 1, 1, T] padding mask expanded to [B, 1, S, T] (the Attention op wants the query
        rows); S read from the input's shape when it is symbolic."""
        cfg, g = self.cfg, self.g
        if cfg.mask == "causal_padding_input":
            return mask  # the causal constant already gave it S rows
        if not cfg.dynamic:
            return g.op("Expand", [mask, g.ints([1, 1, cfg.seq, 1], "shape")])
        seq = g.op("Shape", ["hidden_states"], start=1, end=2)
        return g.op("Expand", [mask, g.op("Concat", [g.ints([1, 1], "shape"), seq, g.ints([1], "shape")], axis=0)])

    def _scores_view(self, scores: str) -> str:
        """Folded scores [B*H, S, T] viewed as [B, H, S, T]."""
        cfg, g = self.cfg, self.g
        if not cfg.dynamic:
            return g.reshape(scores, [-1, cfg.heads, cfg.seq, cfg.t])
        batch = g.op("Gather", [g.op("Shape", ["hidden_states"]), g.ints([0], "idx")], axis=0)
        lengths = g.op("Shape", [scores], start=1)
        return g.reshape(scores, g.op("Concat", [batch, g.ints([cfg.heads], "heads"), lengths], axis=0))

    def _scores_refold(self, scores: str) -> str:
        cfg, g = self.cfg, self.g
        if not cfg.dynamic:
            return g.reshape(scores, [-1, cfg.seq, cfg.t])
        return g.reshape(scores, g.op("Concat", [g.ints([-1], "lead"), g.op("Shape", [scores], start=2)], axis=0))

    def _attention_op(self, q: str, k: str, v: str, layer: int) -> str:
        cfg, g = self.cfg, self.g
        inputs = [q, k, v]
        attrs = {}
        if cfg.scaling == "none":
            attrs["scale"] = 1.0
        if cfg.mask == "causal":
            attrs["is_causal"] = 1
        if cfg.mask in ("padding_input", "causal_padding_input"):
            inputs.append(self._rows(self.padding_mask()))
        else:
            inputs.append("attention_mask" if cfg.mask in ("additive_input", "bool_input") else "")
        outputs = [g.tensor_name("Attention", "Attention")]
        if cfg.has_past:
            inputs += [f"past_key_{layer}", f"past_value_{layer}"]
            outputs += [f"present_key_{layer}", f"present_value_{layer}"]
            for name, shape in zip(outputs[1:], self._present_shapes()):
                g.output(name, self.dt, shape)
        while inputs and inputs[-1] == "":
            inputs.pop()
        g.op("Attention", inputs, outputs=outputs, n_out=len(outputs), role="Attention", **attrs)
        return self.merge_heads(outputs[0])
