"""Build the ONNX graph of an AttentionConfig, op by op, the way exporters write it.

``build(config, seed=...)`` returns a BuiltModel: the ModelProto, the parameters by role,
a feed generator with valid value ranges, and the closed-form reference (fuzz.reference)
computed from the parameters, which is what the graph must equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from fuzz.config import AttentionConfig
from fuzz.graph import GraphBuilder
from fuzz.params import NORM_EPS, LayerParams, ModelParams, draw_params
from fuzz.reference import reference

_EPS = NORM_EPS


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


def _dims(cfg: AttentionConfig, *sizes):
    """Static sizes, or the symbolic names of batch / sequence / past when dynamic."""
    names = {"batch": cfg.batch, "seq": cfg.seq, "past": cfg.past, "total": cfg.t, "kv_seq": cfg.t}
    return [(s if cfg.dynamic else names[s]) if isinstance(s, str) else s for s in sizes]


def make_feeds(cfg: AttentionConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dt = np.float16 if cfg.dtype == "float16" else np.float32
    b, s, e, t = cfg.batch, cfg.seq, cfg.hidden, cfg.t
    feeds = {}
    if cfg.layout == "nchw":
        feeds["hidden_states"] = rng.standard_normal((b, e, 1, s)).astype(dt)
    else:
        feeds["hidden_states"] = rng.standard_normal((b, s, e)).astype(dt)
    if cfg.cross_attention:
        shape = (b, e, 1, t) if cfg.layout == "nchw" else (b, t, e)
        feeds["encoder_hidden_states"] = rng.standard_normal(shape).astype(dt)
    if cfg.rope in ("rotate_half", "rotary_op"):
        feeds["position_ids"] = np.tile(np.arange(cfg.past, cfg.past + s, dtype=np.int64), (b, 1))
    if cfg.rope in ("half_split", "interleaved"):
        angles = np.arange(cfg.past, cfg.past + s)[:, None] * (1.0 / 10000 ** (np.arange(0, cfg.rotary_dim, 2) / cfg.rotary_dim))
        angles = np.broadcast_to(angles, (b, s, cfg.rotary_dim // 2))
        feeds["cos"], feeds["sin"] = np.cos(angles).astype(dt), np.sin(angles).astype(dt)
    if cfg.mask == "additive_input":
        m = np.where(rng.random((b, 1, s, t)) < 0.8, 0.0, cfg.mask_fill)
        m[..., -1] = 0.0
        feeds["attention_mask"] = m.astype(dt)
    elif cfg.mask == "bool_input":
        m = rng.random((b, 1, s, t)) < 0.8
        m[..., -1] = True
        feeds["attention_mask"] = m
    if cfg.has_past:
        for layer in range(cfg.layers):
            shape = (b, cfg.kv_heads, cfg.d, cfg.past) if cfg.past_kv == "full_transposed_key" else (b, cfg.kv_heads, cfg.past, cfg.d)
            feeds[f"past_key_{layer}"] = rng.standard_normal(shape).astype(dt)
            feeds[f"past_value_{layer}"] = rng.standard_normal((b, cfg.kv_heads, cfg.past, cfg.d)).astype(dt)
    if cfg.lora_alpha_input:
        feeds["lora_alpha"] = np.array([0.5], dtype=dt)
    return feeds


class _ModelBuilder:
    def __init__(self, cfg: AttentionConfig, params: ModelParams):
        self.cfg = cfg
        self.p = params
        self.dt = np.float16 if cfg.dtype == "float16" else np.float32
        self.g = GraphBuilder(opset=cfg.opset, opaque=cfg.names == "opaque", dtype=self.dt)
        self.rope_cos = self.rope_sin = None
        self.pos = None

    # -- small pieces ---------------------------------------------------------------------
    def w(self, array: np.ndarray, role: str) -> str:
        return self.g.const(array.astype(self.dt), role, as_weight=True)

    def rms(self, x: str, weight: np.ndarray, role: str, axis: int = -1) -> str:
        g = self.g
        var = g.reduce_mean(g.op("Pow", [x, g.scalar(2.0)]), [axis])
        denom = g.op("Sqrt", [g.op("Add", [var, g.scalar(_EPS)])])
        shape = weight.shape if axis == -1 else (1, weight.shape[0], 1, 1)
        return g.op("Mul", [g.op("Div", [x, denom]), self.w(weight.reshape(shape), f"{role}.weight")], role=role)

    def norm(self, x: str, weight: np.ndarray, bias: np.ndarray | None, role: str, axis: int = -1) -> str:
        """The norm between layers: RMSNorm (decomposed, as TorchScript exports Llama's) or
        LayerNorm (the LayerNormalization op; decomposed over the channel axis of NCHW)."""
        if self.cfg.norm == "rms":
            return self.rms(x, weight, role, axis)
        g = self.g
        if axis == -1:
            inputs = [x, self.w(weight, f"{role}.weight"), self.w(bias, f"{role}.bias")]
            return g.op("LayerNormalization", inputs, role=role, axis=-1, epsilon=_EPS)
        mean = g.reduce_mean(x, [axis])
        centered = g.op("Sub", [x, mean])
        var = g.reduce_mean(g.op("Pow", [centered, g.scalar(2.0)]), [axis])
        normed = g.op("Div", [centered, g.op("Sqrt", [g.op("Add", [var, g.scalar(_EPS)])])])
        shape = (1, weight.shape[0], 1, 1)
        scaled = g.op("Mul", [normed, self.w(weight.reshape(shape), f"{role}.weight")])
        return g.op("Add", [scaled, self.w(bias.reshape(shape), f"{role}.bias")], role=role)

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
            return [cfg.batch, cfg.seq if x != self.cross_source else cfg.t, out_ch]
        lead = g.op("Shape", [x], start=0, end=2)
        return g.op("Concat", [lead, g.ints([out_ch])], axis=0)

    # -- attention --------------------------------------------------------------------------
    def split_heads(self, y: str, n: int, *, key: bool = False) -> str:
        cfg, g = self.cfg, self.g
        d = cfg.d
        if cfg.layout == "nchw":
            t = g.reshape(y, [0, n, d, -1])  # [B, n, D, S]
            return t if key else g.transpose(t, [0, 1, 3, 2])
        heads = -1 if cfg.reshape_minus_one else n
        r = g.reshape(y, [0, 0, heads, d])
        if key and cfg.head_split == "fused_kt":
            return g.transpose(r, [0, 2, 3, 1])
        return g.transpose(r, [0, 2, 1, 3])

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

    def repeat_kv(self, x: str, transposed: bool) -> str:
        cfg, g = self.cfg, self.g
        n = cfg.group
        if n == 1 or cfg.gqa_repeat == "broadcast":
            return x
        if cfg.gqa_repeat == "tile":
            return g.op("Tile", [x, g.ints([1, n, 1, 1], "repeats")])
        e = g.op("Expand", [g.unsqueeze(x, [2]), g.ints([1, 1, n, 1, 1], "shape")])
        return g.reshape(e, [0, cfg.heads, cfg.d, -1] if transposed else [0, cfg.heads, -1, cfg.d])

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
        if cfg.fused_qkv != "none":
            w = np.concatenate([lp.wq, lp.wk, lp.wv], axis=1)
            b = None if lp.bq is None else np.concatenate([lp.bq, lp.bk, lp.bv])
            qkv = self.project(x, w, b, "qkv_proj")
            sizes = [h * d, kv * d, kv * d]
            if cfg.fused_qkv == "split":
                q, k, v = g.split(qkv, sizes, axis=-1)
            elif cfg.fused_qkv == "slice":
                bounds = np.cumsum([0] + sizes)
                q, k, v = (g.slice(qkv, int(bounds[n]), int(bounds[n + 1]), -1) for n in range(3))
            else:  # [B, S, 3, H, D] then Gather on the qkv axis
                five = g.reshape(qkv, [0, 0, 3, h, d])
                q, k, v = (g.reshape(g.op("Gather", [five, g.const(np.array(n, np.int64), "qkv_index")], axis=2), [0, 0, h * d]) for n in range(3))
        else:
            q = self.project(x, lp.wq, lp.bq, "q_proj", lp.lora.get("q"), alphas)
            k = self.project(source, lp.wk, lp.bk, "k_proj", lp.lora.get("k"), alphas)
            v = self.project(source, lp.wv, lp.bv, "v_proj", lp.lora.get("v"), alphas)
        q = self.split_heads(q, h)
        key_transposed = cfg.layout == "nchw" or cfg.head_split == "fused_kt"
        k = self.split_heads(k, kv, key=True)
        v = self.split_heads(v, kv)
        if cfg.qk_norm:
            q = self.rms(q, lp.q_norm, "q_norm")
            k = self.rms(k, lp.k_norm, "k_norm")
        if cfg.rope != "none":
            q, k = self.rope(q), self.rope(k)
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
                term = g.reshape(g.op("Expand", [term, g.ints([1, h, 1, 1], "shape")]) if term != "attention_mask" else term, [0, kv if term != "attention_mask" else 1, -1, cfg.seq, cfg.t])
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
        out = g.op("MatMul", [probs, v], role="MatMul_1")
        if broadcast:
            out = g.reshape(out, [0, h, -1, d])
        if cfg.head_split == "folded":
            out = self._unfold(out)
        return self.merge_heads(out)

    def _fold(self, x: str, inner: list[int], seq_at: int) -> str:
        """[B, H, a, b] -> [B*H, a, b] (heads folded into batch); ``seq_at`` is the index in
        ``inner`` of the sequence length. Static target, or with symbolic dims the form that
        BART / Whisper TorchScript exports write: [Shape(x)[0] * H, .., -1 for the sequence, ..].
        (A static S next to a symbolic batch would tie S to the example size.)"""
        cfg, g = self.cfg, self.g
        if not cfg.dynamic:
            return g.reshape(x, [-1, *inner])
        batch = g.op("Gather", [g.op("Shape", [x]), g.ints([0], "idx")], axis=0)
        lead = g.op("Mul", [batch, g.ints([cfg.heads], "heads")])
        rest = [-1 if k == seq_at else n for k, n in enumerate(inner)]
        return g.reshape(x, g.op("Concat", [lead, g.ints(rest, "shape")], axis=0))

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

    def _unfold(self, x: str) -> str:
        """[B*H, S, D] -> [B, H, S, D]; with symbolic dims the batch read from the model input."""
        cfg, g = self.cfg, self.g
        if not cfg.dynamic:
            return g.reshape(x, [-1, cfg.heads, cfg.seq, cfg.d])
        batch = g.op("Gather", [g.op("Shape", ["hidden_states"]), g.ints([0], "idx")], axis=0)
        return g.reshape(x, g.op("Concat", [batch, g.ints([cfg.heads, -1, cfg.d], "shape")], axis=0))

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
        key = _dims(cfg, "batch", cfg.kv_heads, cfg.d, length) if cfg.past_kv == "full_transposed_key" else _dims(cfg, "batch", cfg.kv_heads, length, cfg.d)
        return key, _dims(cfg, "batch", cfg.kv_heads, length, cfg.d)

    def _present(self, layer: int, k: str, v: str) -> None:
        g = self.g
        shapes = self._present_shapes()
        for (name, value), shape in zip(((f"present_key_{layer}", k), (f"present_value_{layer}", v)), shapes):
            g.op("Identity", [value], outputs=[name])
            g.output(name, self.dt, shape)

    def _attention_op(self, q: str, k: str, v: str, layer: int) -> str:
        cfg, g = self.cfg, self.g
        inputs = [q, k, v]
        attrs = {}
        if cfg.scaling == "none":
            attrs["scale"] = 1.0
        if cfg.mask == "causal":
            attrs["is_causal"] = 1
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

    def merge_heads(self, out: str) -> str:
        cfg, g = self.cfg, self.g
        if cfg.layout == "nchw":
            return g.reshape(g.transpose(out, [0, 1, 3, 2]), [0, cfg.heads * cfg.d, 1, -1])
        return g.reshape(g.transpose(out, [0, 2, 1, 3]), [0, 0, -1 if cfg.reshape_minus_one else cfg.heads * cfg.d])

    # -- the model --------------------------------------------------------------------------
    def build(self) -> onnx.ModelProto:
        cfg, g = self.cfg, self.g
        b, s, e, t = "batch", "seq", cfg.hidden, "total"
        x = g.input("hidden_states", self.dt, _dims(cfg, b, e, 1, s) if cfg.layout == "nchw" else _dims(cfg, b, s, e))
        self.cross_source = None
        if cfg.cross_attention:
            shape = _dims(cfg, b, e, 1, "kv_seq") if cfg.layout == "nchw" else _dims(cfg, b, "kv_seq", e)
            self.cross_source = g.input("encoder_hidden_states", self.dt, shape)
        if cfg.rope in ("rotate_half", "rotary_op"):
            g.input("position_ids", np.int64, _dims(cfg, b, s))
        if cfg.rope in ("half_split", "interleaved"):
            g.input("cos", self.dt, _dims(cfg, b, s, cfg.rotary_dim // 2))
            g.input("sin", self.dt, _dims(cfg, b, s, cfg.rotary_dim // 2))
        if cfg.mask == "additive_input":
            g.input("attention_mask", self.dt, _dims(cfg, b, 1, s, t))
        elif cfg.mask == "bool_input":
            g.input("attention_mask", np.bool_, _dims(cfg, b, 1, s, t))
        if cfg.has_past:
            for layer in range(cfg.layers):
                key_shape = _dims(cfg, b, cfg.kv_heads, cfg.d, "past") if cfg.past_kv == "full_transposed_key" else _dims(cfg, b, cfg.kv_heads, "past", cfg.d)
                g.input(f"past_key_{layer}", self.dt, key_shape)
                g.input(f"past_value_{layer}", self.dt, _dims(cfg, b, cfg.kv_heads, "past", cfg.d))
        if cfg.lora_alpha_input:
            g.input("lora_alpha", self.dt, [1])
        channel_axis = 1 if cfg.layout == "nchw" else -1
        for layer, lp in enumerate(self.p.layers):
            g.scope = f"/model/layers.{layer}"
            hn = self.norm(x, lp.norm1, lp.norm1_bias, "input_layernorm", axis=channel_axis)
            attn = self.attention(lp, layer, hn)
            g.scope = f"/model/layers.{layer}/self_attn"
            attn = self.project(attn, lp.wo, lp.bo, "o_proj")
            g.scope = f"/model/layers.{layer}"
            x = g.op("Add", [x, attn], role="residual_add")
            if cfg.mlp:
                g.scope = f"/model/layers.{layer}/mlp"
                h2 = self.norm(x, lp.norm2, lp.norm2_bias, "post_attention_layernorm", axis=channel_axis)
                gate = self.project(h2, lp.w_gate, None, "gate_proj")
                act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), self.project(h2, lp.w_up, None, "up_proj")])
                x = g.op("Add", [x, self.project(act, lp.w_down, None, "down_proj")])
        g.op("Identity", [x], outputs=["output"])
        out_shape = _dims(cfg, "batch", e, 1, "seq") if cfg.layout == "nchw" else _dims(cfg, "batch", "seq", e)
        g.outputs.insert(0, onnx.helper.make_tensor_value_info("output", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dt)), out_shape))
        return g.model(shuffle_seed=1 if cfg.shuffle else None)


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
