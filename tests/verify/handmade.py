"""An MHA model and an SHA model of the same attention, both written here by hand with
onnx.helper from one set of numpy weights: a pair that mha2sha did not make.

The SHA model is built the way another tool would: its own tensor names, per-head weight
slices ``W[:, hD:(h+1)D]``, K/V once per kv head, heads concatenated before the output
projection, per-kv-head caches in one of three layouts:

- ``"pieces"``: ``past_key_h{g}`` ``[B, P, D]`` (the head axis removed),
- ``"keepdims"``: ``past_key_h{g}`` ``[B, 1, P, D]``,
- ``"head_major"``: one ``past_key`` ``[KV, B, P, D]`` (the reference tool's ``[H, 1, P, D]``
  at batch 1), read per head with Gather and written with Unsqueeze -> Concat.

``closed_form`` computes the same attention in numpy (float64), independent of both graphs.
Defects (``DEFECTS``) change the SHA model the way a converter bug would.
"""

# ruff: noqa: B023 - the per-layer helpers are closures called inside their own loop iteration
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class Pair:
    batch: int = 1
    seq: int = 5
    past: int = 0  # > 0: a KV cache (present = concat(past, new) returned)
    hidden: int = 24
    heads: int = 4
    kv_heads: int = 2
    rope: bool = True
    mask: bool = True
    bias: bool = True
    layers: int = 1
    cache_layout: str = "pieces"
    pre_op: str | None = None  # an elementwise op on the hidden state before attention (e.g. "Atan")
    score_op: str | None = None  # an elementwise op on the attention scores (inside the block)
    merge: str = "concat"  # SHA heads: "concat" before o_proj, or "sum" of per-head o_proj slices
    defects: tuple = field(default_factory=tuple)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def params(p: Pair, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    E, H, KV, D = p.hidden, p.heads, p.kv_heads, p.head_dim
    out = {}
    for layer in range(p.layers):
        # Peaked attention: large q/k weights so that every defect moves the output far.
        out[f"{layer}.wq"] = rng.standard_normal((E, H * D)) * 0.9
        out[f"{layer}.wk"] = rng.standard_normal((E, KV * D)) * 0.9
        out[f"{layer}.wv"] = rng.standard_normal((E, KV * D)) * 0.5
        out[f"{layer}.wo"] = rng.standard_normal((H * D, E)) * 0.5
        out[f"{layer}.bq"] = rng.standard_normal(H * D)
        out[f"{layer}.bk"] = rng.standard_normal(KV * D)
        out[f"{layer}.bv"] = rng.standard_normal(KV * D)
    T = p.seq + p.past
    pos = np.arange(p.past, T)[:, None]
    inv = 1.0 / 10000 ** (np.arange(0, D, 2) / D)
    ang = np.concatenate([pos * inv, pos * inv], axis=1)
    out["cos"], out["sin"] = np.cos(ang), np.sin(ang)
    mask = np.zeros((p.seq, T))
    for i in range(p.seq):
        mask[i, p.past + i + 1:] = -1e4
    out["mask"] = mask
    return {k: v.astype(np.float32) for k, v in out.items()}


def _rot(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def closed_form(p: Pair, w: dict, feeds: dict) -> dict[str, np.ndarray]:
    """The MHA model's outputs in float64 numpy."""
    H, KV, D, S = p.heads, p.kv_heads, p.head_dim, p.seq
    x = feeds["x"].astype(np.float64)
    if p.pre_op == "Atan":
        x = np.arctan(x)
    out = {}
    for layer in range(p.layers):
        def proj(name, n):
            y = x @ w[f"{layer}.w{name}"]
            if p.bias:
                y = y + w[f"{layer}.b{name}"]
            return y.reshape(p.batch, S, n, D).transpose(0, 2, 1, 3)

        q, k, v = proj("q", H), proj("k", KV), proj("v", KV)
        if p.rope:
            q = q * w["cos"] + _rot(q) * w["sin"]
            k = k * w["cos"] + _rot(k) * w["sin"]
        if p.past:
            k = np.concatenate([feeds[f"past_key_{layer}"], k], axis=2)
            v = np.concatenate([feeds[f"past_value_{layer}"], v], axis=2)
            out[f"present_key_{layer}"], out[f"present_value_{layer}"] = k, v
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D)
        if p.score_op == "Atan":
            s = np.arctan(s)
        if p.mask:
            s = s + w["mask"]
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = x + a.transpose(0, 2, 1, 3).reshape(p.batch, S, H * D) @ w[f"{layer}.wo"]
    out["y"] = x
    return out


class _G:
    def __init__(self, prefix: str):
        self.nodes, self.inits, self.prefix, self.n = [], [], prefix, 0

    def const(self, array, name=None) -> str:
        name = name or self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def fresh(self, what: str) -> str:
        self.n += 1
        return f"{self.prefix}{what}_{self.n}"

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs):
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(op_type), **attrs))
        return outs[0] if n_out == 1 else outs


def _rope(g: _G, x: str, cos: str, sin: str, D: int, swap_halves: bool = False) -> str:
    half = D // 2
    x1 = g.op("Slice", [x, g.const(np.array([0])), g.const(np.array([half])), g.const(np.array([-1]))])
    x2 = g.op("Slice", [x, g.const(np.array([half])), g.const(np.array([D])), g.const(np.array([-1]))])
    parts = [x1, g.op("Neg", [x2])] if swap_halves else [g.op("Neg", [x2]), x1]
    rot = g.op("Concat", parts, axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rot, sin])])


def build_mha(p: Pair, w: dict) -> onnx.ModelProto:
    """The MHA model: fused heads, K/V repeated by Unsqueeze -> Expand -> Reshape."""
    g = _G("")
    H, KV, D, S, B, T = p.heads, p.kv_heads, p.head_dim, p.seq, p.batch, p.seq + p.past
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, p.hidden])]
    outputs = []
    x = g.op(p.pre_op, ["x"]) if p.pre_op else "x"
    cos, sin, mask = g.const(w["cos"], "cos"), g.const(w["sin"], "sin"), g.const(w["mask"], "mask")
    for layer in range(p.layers):
        def proj(name, n):
            y = g.op("MatMul", [x, g.const(w[f"{layer}.w{name}"], f"{layer}.w{name}")])
            if p.bias:
                y = g.op("Add", [y, g.const(w[f"{layer}.b{name}"], f"{layer}.b{name}")])
            y = g.op("Reshape", [y, g.const(np.array([B, S, n, D]))])
            return g.op("Transpose", [y], perm=[0, 2, 1, 3])

        q, k, v = proj("q", H), proj("k", KV), proj("v", KV)
        if p.rope:
            q, k = _rope(g, q, cos, sin, D), _rope(g, k, cos, sin, D)
        if p.past:
            for name, t in (("key", k), ("value", v)):
                inputs.append(helper.make_tensor_value_info(f"past_{name}_{layer}", TensorProto.FLOAT, [B, KV, p.past, D]))
                cat = g.op("Concat", [f"past_{name}_{layer}", t], axis=2)
                g.nodes.append(helper.make_node("Identity", [cat], [f"present_{name}_{layer}"]))
                outputs.append(helper.make_tensor_value_info(f"present_{name}_{layer}", TensorProto.FLOAT, [B, KV, T, D]))
                if name == "key":
                    k = f"present_key_{layer}"
                else:
                    v = f"present_value_{layer}"

        def repeat(t):
            t = g.op("Unsqueeze", [t, g.const(np.array([2]))])
            t = g.op("Expand", [t, g.const(np.array([B, KV, H // KV, T, D]))])
            return g.op("Reshape", [t, g.const(np.array([B, H, T, D]))])

        k, v = repeat(k), repeat(v)
        s = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        s = g.op("Div", [s, g.const(np.array(np.sqrt(D), dtype=np.float32))])
        if p.score_op:
            s = g.op(p.score_op, [s])
        if p.mask:
            s = g.op("Add", [s, mask])
        a = g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])
        a = g.op("Reshape", [g.op("Transpose", [a], perm=[0, 2, 1, 3]), g.const(np.array([B, S, H * D]))])
        o = g.op("MatMul", [a, g.const(w[f"{layer}.wo"], f"{layer}.wo")])
        x = g.op("Add", [x, o])
    g.nodes.append(helper.make_node("Identity", [x], ["y"]))
    outputs.insert(0, helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, p.hidden]))
    return _model(g, inputs, outputs, "mha")


def build_sha(p: Pair, w: dict) -> onnx.ModelProto:
    """The SHA model, written head by head; ``p.defects`` break it like a converter bug."""
    g = _G("sha/")
    H, KV, D, S, B, T = p.heads, p.kv_heads, p.head_dim, p.seq, p.batch, p.seq + p.past
    group = H // KV
    d = set(p.defects)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, p.hidden])]
    outputs = []
    x = g.op(p.pre_op, ["x"]) if p.pre_op else "x"
    cos, sin, mask = g.const(w["cos"], "sha/cos"), g.const(w["sin"], "sha/sin"), g.const(w["mask"], "sha/mask")
    for layer in range(p.layers):
        def proj(name, head, slot=None):
            slot = head if slot is None else slot
            weight = w[f"{layer}.w{name}"][:, slot * D:(slot + 1) * D]
            y = g.op("MatMul", [x, g.const(weight, f"sha/l{layer}.w{name}.h{head}")])
            if p.bias:
                bias = w[f"{layer}.b{name}"][slot * D:(slot + 1) * D]
                if name == "q" and head == 0 and "shifted bias" in d:
                    bias = np.roll(bias, 1)
                y = g.op("Add", [y, g.const(bias, f"sha/l{layer}.b{name}.h{head}")])
            return y  # [B, S, D]

        keys, values = [], []
        if p.past and p.cache_layout == "head_major":
            stacked = {}
            for name in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_{name}_{layer}", TensorProto.FLOAT, [KV, B, p.past, D]))
                stacked[name] = f"past_{name}_{layer}"
        for kv in range(KV):
            k, v = proj("k", kv), proj("v", kv)
            if p.rope:
                k = _rope(g, k, cos, sin, D)
            if p.past:
                for name in ("key", "value"):
                    new = k if name == "key" else v
                    if p.cache_layout == "head_major":
                        past = g.op("Gather", [stacked[name], g.const(np.array(kv))], axis=0)
                    elif p.cache_layout == "keepdims":
                        inputs.append(helper.make_tensor_value_info(f"past_{name}_{layer}_h{kv}", TensorProto.FLOAT, [B, 1, p.past, D]))
                        past = g.op("Squeeze", [f"past_{name}_{layer}_h{kv}", g.const(np.array([1]))])
                    else:
                        inputs.append(helper.make_tensor_value_info(f"past_{name}_{layer}_h{kv}", TensorProto.FLOAT, [B, p.past, D]))
                        past = f"past_{name}_{layer}_h{kv}"
                    full = g.op("Concat", [past, new], axis=1)
                    if name == "key":
                        k = full
                    else:
                        v = full
            keys.append(k)
            values.append(v)
        if p.past:
            for name, per_head in (("key", keys), ("value", values)):
                if p.cache_layout == "head_major":
                    parts = [g.op("Unsqueeze", [t, g.const(np.array([0]))]) for t in per_head]
                    g.nodes.append(helper.make_node("Concat", parts, [f"present_{name}_{layer}"], axis=0))
                    outputs.append(helper.make_tensor_value_info(f"present_{name}_{layer}", TensorProto.FLOAT, [KV, B, T, D]))
                    continue
                for kv, t in enumerate(per_head):
                    out_name = f"present_{name}_{layer}_h{kv}"
                    if p.cache_layout == "keepdims":
                        t = g.op("Unsqueeze", [t, g.const(np.array([1]))])
                        shape = [B, 1, T, D]
                    else:
                        shape = [B, T, D]
                    g.nodes.append(helper.make_node("Identity", [t], [out_name]))
                    outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape))
        heads = []
        for h in range(H):
            slot = {0: 1, 1: 0}.get(h, h) if "head swap" in d else h
            q = proj("q", h, slot)
            if p.rope:
                q = _rope(g, q, cos, sin, D, swap_halves="RoPE halves" in d and h == 0)
            kv = h // group
            if "wrong kv group" in d and h == 0:
                kv = (kv + 1) % KV
            s = g.op("MatMul", [q, g.op("Transpose", [keys[kv]], perm=[0, 2, 1])])
            scale = np.sqrt(D) * (1.5 if "scale" in d and h == 0 else 1.0)
            s = g.op("Div", [s, g.const(np.array(scale, dtype=np.float32))])
            if p.score_op:
                s = g.op(p.score_op, [s])
            if p.mask and not ("dropped mask" in d and h == 0):
                s = g.op("Add", [s, mask])
            heads.append(g.op("MatMul", [g.op("Softmax", [s], axis=-1), values[kv]]))
        if p.merge == "sum":  # each head through its rows of o_proj, summed: no head Concat
            o = None
            for h, a in enumerate(heads):
                part = g.op("MatMul", [a, g.const(w[f"{layer}.wo"][h * D:(h + 1) * D], f"sha/l{layer}.wo.h{h}")])
                o = part if o is None else g.op("Add", [o, part])
        else:
            merged = g.op("Concat", heads, axis=-1)
            o = g.op("MatMul", [merged, g.const(w[f"{layer}.wo"], f"sha/l{layer}.wo")])
        x = g.op("Add", [x, o])
    g.nodes.append(helper.make_node("Identity", [x], ["y"]))
    outputs.insert(0, helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, p.hidden]))
    return _model(g, inputs, outputs, "sha")


def _model(g: _G, inputs, outputs, name: str) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(g.nodes, name, inputs, outputs, g.inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(p: Pair, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"x": rng.standard_normal((p.batch, p.seq, p.hidden)).astype(np.float32)}
    for layer in range(p.layers if p.past else 0):
        for name in ("key", "value"):
            out[f"past_{name}_{layer}"] = rng.standard_normal((p.batch, p.kv_heads, p.past, p.head_dim)).astype(np.float32)
    return out


def sha_feeds(p: Pair, f: dict) -> dict[str, np.ndarray]:
    """The SHA model's graph inputs for the MHA model's feeds ``f``."""
    out = {"x": f["x"]}
    for name, value in f.items():
        if not name.startswith("past_"):
            continue
        if p.cache_layout == "head_major":
            out[name] = np.moveaxis(value, 1, 0)
        else:
            for kv in range(p.kv_heads):
                out[f"{name}_h{kv}"] = value[:, kv:kv + 1] if p.cache_layout == "keepdims" else value[:, kv]
    return out


DEFECTS = ("head swap", "wrong kv group", "RoPE halves", "dropped mask", "scale", "shifted bias")
