"""Norms, the residual decoder layers and the model's inputs and outputs."""

from __future__ import annotations

import numpy as np
import onnx

from fuzz.builder.base import EPS, BuilderBase, dims
from fuzz.config import PADDING_MASKS


class LayersMixin(BuilderBase):
    def rms(self, x: str, weight: np.ndarray, role: str, axis: int = -1) -> str:
        g = self.g
        var = g.reduce_mean(g.op("Pow", [x, g.scalar(2.0)]), [axis])
        denom = g.op("Sqrt", [g.op("Add", [var, g.scalar(EPS)])])
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
            return g.op("LayerNormalization", inputs, role=role, axis=-1, epsilon=EPS)
        mean = g.reduce_mean(x, [axis])
        centered = g.op("Sub", [x, mean])
        var = g.reduce_mean(g.op("Pow", [centered, g.scalar(2.0)]), [axis])
        normed = g.op("Div", [centered, g.op("Sqrt", [g.op("Add", [var, g.scalar(EPS)])])])
        shape = (1, weight.shape[0], 1, 1)
        scaled = g.op("Mul", [normed, self.w(weight.reshape(shape), f"{role}.weight")])
        return g.op("Add", [scaled, self.w(bias.reshape(shape), f"{role}.bias")], role=role)

    def build(self) -> onnx.ModelProto:
        cfg, g = self.cfg, self.g
        b, s, e, t = "batch", "seq", cfg.hidden, "total"
        x = g.input("hidden_states", self.dt, dims(cfg, b, e, 1, s) if cfg.layout == "nchw" else dims(cfg, b, s, e))
        self.cross_source = None
        if cfg.cross_attention or cfg.joint_attention:
            shape = dims(cfg, b, e, 1, "kv_seq") if cfg.layout == "nchw" else dims(cfg, b, "kv_seq", e)
            self.cross_source = g.input("encoder_hidden_states", self.dt, shape)
        if cfg.rope in ("rotate_half", "rotary_op"):
            g.input("position_ids", np.int64, dims(cfg, b, s))
        if cfg.rope in ("half_split", "interleaved"):
            g.input("cos", self.dt, dims(cfg, b, s, cfg.rotary_dim // 2))
            g.input("sin", self.dt, dims(cfg, b, s, cfg.rotary_dim // 2))
        if cfg.mask == "additive_input":
            g.input("attention_mask", self.dt, dims(cfg, b, 1, s, t))
        elif cfg.mask == "bool_input":
            g.input("attention_mask", np.bool_, dims(cfg, b, 1, s, t))
        elif cfg.mask in PADDING_MASKS:
            g.input("attention_mask", np.int64, dims(cfg, b, t))
        if cfg.has_past:
            for layer in range(cfg.layers):
                key_shape = dims(cfg, b, cfg.kv_heads, cfg.d, "past") if cfg.past_kv == "full_transposed_key" else dims(cfg, b, cfg.kv_heads, "past", cfg.d)
                g.input(f"past_key_{layer}", self.dt, key_shape)
                g.input(f"past_value_{layer}", self.dt, dims(cfg, b, cfg.kv_heads, "past", cfg.d))
        if cfg.lora_alpha_input:
            g.input("lora_alpha", self.dt, [1])
        channel_axis = 1 if cfg.layout == "nchw" else -1
        for layer, lp in enumerate(self.p.layers):
            g.scope = f"/model/layers.{layer}"
            hn = self.norm(x, lp.norm1, lp.norm1_bias, "input_layernorm", axis=channel_axis)
            attn = self.attention(lp, layer, hn)
            attn, pooled = attn if isinstance(attn, tuple) else (attn, None)  # joint attention: + text rows
            g.scope = f"/model/layers.{layer}/self_attn"
            attn = self.project(attn, lp.wo, lp.bo, "o_proj")
            if pooled is not None:
                attn = g.op("Add", [attn, pooled])
            g.scope = f"/model/layers.{layer}"
            x = g.op("Add", [x, attn], role="residual_add")
            if cfg.mlp:
                g.scope = f"/model/layers.{layer}/mlp"
                h2 = self.norm(x, lp.norm2, lp.norm2_bias, "post_attention_layernorm", axis=channel_axis)
                gate = self.project(h2, lp.w_gate, None, "gate_proj")
                act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), self.project(h2, lp.w_up, None, "up_proj")])
                x = g.op("Add", [x, self.project(act, lp.w_down, None, "down_proj")])
        g.op("Identity", [x], outputs=["output"])
        out_shape = dims(cfg, "batch", e, 1, "seq") if cfg.layout == "nchw" else dims(cfg, "batch", "seq", e)
        g.outputs.insert(0, onnx.helper.make_tensor_value_info("output", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dt)), out_shape))
        return g.model(shuffle_seed=1 if cfg.shuffle else None)
