"""Generate Llama-shaped ONNX models of any size without holding the weights in memory.

Weights are random (seeded), written tensor by tensor into ``<name>.onnx.data`` in chunks;
the graph mirrors a TorchScript export of HF Llama: RMSNorm, q/k/v projections, rotate-half
RoPE with cos/sin inputs, GQA repeat (Unsqueeze/Expand/Reshape), additive mask input,
softmax attention, o_proj, SwiGLU MLP, residuals, final norm and lm_head.

    python bench/llama_gen.py --layers 16 --hidden 2048 --heads 32 --kv-heads 8 -o /tmp/llama1b
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_CHUNK = 1 << 24  # elements generated at a time


class _Writer:
    def __init__(self, data_path: Path, dtype, seed: int):
        self.fh = open(data_path, "wb")
        self.location = data_path.name
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.offset = 0
        self.initializers: list[TensorProto] = []

    def random(self, name: str, shape: tuple[int, ...], scale: float) -> str:
        count = math.prod(shape)
        start = self.offset
        remaining = count
        while remaining:
            n = min(remaining, _CHUNK)
            chunk = (self.rng.standard_normal(n, dtype=np.float32) * scale).astype(self.dtype)
            self.fh.write(chunk.tobytes())
            remaining -= n
        length = count * self.dtype.itemsize
        self.offset += length
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(self.dtype)
        t.dims.extend(shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(start)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.initializers.append(t)
        return name

    def small(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def close(self) -> None:
        self.fh.close()


def generate(out_dir: Path, *, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int | None = None,
             vocab: int = 1024, dtype: str = "float32", seed: int = 0, name: str = "llama") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    head_dim = hidden // heads
    intermediate = intermediate or int(hidden * 8 / 3 // 256 * 256) or 4 * hidden
    np_dtype = np.float16 if dtype == "float16" else np.float32
    onnx_dtype = helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))
    w = _Writer(out_dir / f"{name}.onnx.data", np_dtype, seed)
    nodes: list[onnx.NodeProto] = []
    counter = [0]

    def node(op, inputs, n_out=1, **attrs):
        counter[0] += 1
        outs = [f"val_{counter[0]}_{k}" for k in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, name=f"node_{counter[0]}", **attrs))
        return outs[0] if n_out == 1 else outs

    def const(values, dt=np.int64):
        counter[0] += 1
        return w.small(f"const_{counter[0]}", np.array(values, dtype=dt))

    eps = const(1e-5, np_dtype)
    two = const(2.0, np_dtype)

    def rms(x, weight):
        var = node("ReduceMean", [node("Pow", [x, two])], axes=[-1], keepdims=1)
        return node("Mul", [node("Div", [x, node("Sqrt", [node("Add", [var, eps])])]), weight])

    scale = const(math.sqrt(head_dim), np_dtype)
    cos = node("Unsqueeze", ["cos", const([1])])
    sin = node("Unsqueeze", ["sin", const([1])])
    half = head_dim // 2

    def rope(x):
        x1 = node("Slice", [x, const([0]), const([half]), const([-1])])
        x2 = node("Slice", [x, const([half]), const([head_dim]), const([-1])])
        rotated = node("Concat", [node("Neg", [x2]), x1], axis=-1)
        return node("Add", [node("Mul", [x, cos]), node("Mul", [rotated, sin])])

    n_rep = heads // kv_heads
    h = node("Gather", [w.random("embed_tokens.weight", (vocab, hidden), 0.5), "input_ids"])
    proj_scale = 1.0 / math.sqrt(hidden)
    for layer in range(layers):
        p = f"layers.{layer}"
        x = rms(h, w.small(f"{p}.input_layernorm.weight", np.ones(hidden, np_dtype)))
        q = node("MatMul", [x, w.random(f"{p}.q_proj.weight", (hidden, heads * head_dim), 3 * proj_scale)])
        k = node("MatMul", [x, w.random(f"{p}.k_proj.weight", (hidden, kv_heads * head_dim), 3 * proj_scale)])
        v = node("MatMul", [x, w.random(f"{p}.v_proj.weight", (hidden, kv_heads * head_dim), proj_scale)])
        q = node("Transpose", [node("Reshape", [q, const([0, 0, heads, head_dim])])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, const([0, 0, kv_heads, head_dim])])], perm=[0, 2, 1, 3])
        v = node("Transpose", [node("Reshape", [v, const([0, 0, kv_heads, head_dim])])], perm=[0, 2, 1, 3])
        q, k = rope(q), rope(k)
        if n_rep > 1:
            def repeat(t):
                e = node("Expand", [node("Unsqueeze", [t, const([2])]), const([1, 1, n_rep, 1, 1])])
                return node("Reshape", [e, const([0, heads, -1, head_dim])])
            k, v = repeat(k), repeat(v)
        scores = node("Add", [node("Div", [node("MatMul", [q, node("Transpose", [k], perm=[0, 1, 3, 2])]), scale]), "attention_mask"])
        attn = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        attn = node("Reshape", [node("Transpose", [attn], perm=[0, 2, 1, 3]), const([0, 0, hidden])])
        h = node("Add", [h, node("MatMul", [attn, w.random(f"{p}.o_proj.weight", (hidden, hidden), proj_scale)])])
        x = rms(h, w.small(f"{p}.post_attention_layernorm.weight", np.ones(hidden, np_dtype)))
        gate = node("MatMul", [x, w.random(f"{p}.gate_proj.weight", (hidden, intermediate), proj_scale)])
        up = node("MatMul", [x, w.random(f"{p}.up_proj.weight", (hidden, intermediate), proj_scale)])
        act = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate])]), up])
        h = node("Add", [h, node("MatMul", [act, w.random(f"{p}.down_proj.weight", (intermediate, hidden), 1.0 / math.sqrt(intermediate))])])
    h = rms(h, w.small("norm.weight", np.ones(hidden, np_dtype)))
    nodes.append(helper.make_node("MatMul", [h, w.random("lm_head.weight", (hidden, vocab), proj_scale)], ["logits"], name="lm_head"))
    w.close()
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", onnx_dtype, ["batch", 1, "seq", "seq"]),
        helper.make_tensor_value_info("cos", onnx_dtype, ["batch", "seq", head_dim]),
        helper.make_tensor_value_info("sin", onnx_dtype, ["batch", "seq", head_dim]),
    ]
    outputs = [helper.make_tensor_value_info("logits", onnx_dtype, ["batch", "seq", vocab])]
    graph = helper.make_graph(nodes, name, inputs, outputs, w.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = out_dir / f"{name}.onnx"
    onnx.save(model, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--intermediate", type=int)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--name", default="llama")
    args = ap.parse_args()
    path = generate(Path(args.output), layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                    intermediate=args.intermediate, vocab=args.vocab, dtype=args.dtype, name=args.name)
    print(path)


if __name__ == "__main__":
    main()
