"""One head of an opset-23 ``Attention`` op, written out as the primitive ops it stands for.

Why not a one-head ``Attention`` node: Qualcomm's HTP backend (onnxruntime-qnn) compiles it
and then fails at run time: every present output becomes a graph output of the QNN graph
("Provided 5 tensors, expected 21"), the query heads of a GQA group leave dangling present
outputs, and with a boolean mask (HF dynamo opset-23 exports) QNN refuses the op outright.
The decomposition runs everywhere and lets the kv-head work be shared:

    per kv head g (once, shared by the query heads of its group)
        keys = Concat(past_k, k)   values = Concat(past_v, v)                     [B, T, D]
        present_k / present_v = Identity(keys / values)  (they carry the outputs' encodings)
        k_t = Transpose(keys)                                                     [B, D, T]
    per block (once): the additive bias = the mask (bool -> 0 / lowest) + the causal bias
    per query head h
        y = MatMul(Softmax(MatMul(q * scale, k_t) [softcap] + bias), values)     [B, S, Dv]

Semantics follow the ONNX spec (refimpl.ops.attention states them): default scale
1/sqrt(D), softcap before the mask, bool mask True = attend, ``is_causal`` bottom-right
aligned (query i sees keys j <= i + past length). Not decomposed (the block is then left
unchanged, with the reason): ``nonpad_kv_seqlen``, a mask shorter than the keys, a causal
mask over symbolic lengths, qk_matmul_output. A bool mask becomes 0 / lowest (not -inf: keeps
fp16 finite), so a row with every key masked would give the average of the values; the spec
gives zeros there (left-padded batches have such rows), and so does the decomposition: a
per-block 0/1 "row attends some key" factor zeroes those rows of every head (a Where, which also
clears the NaN of a row whose float mask is all -inf).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir

from mha2sha.errors import Refusal
from mha2sha.graph.ir_utils import dims


def emit(em, inst, ins: list, head: int, tag: str) -> dict[int, ir.Value]:
    """Emit query head ``head`` of the Attention instance ``inst`` through the emitter ``em``
    (mha2sha.split.emit.BlockEmitter); ``ins`` are the head's pieces of the node's inputs:
    q [B, S, D], k / v [B, S_kv, D], mask [B|1, S|1, T] (head axis removed), past [B, P, D]."""
    node = inst.node
    em._replayable = False  # shares kv-head and block-level values through the caches below
    q, k, v = ins[0], ins[1], ins[2]
    mask = ins[3] if len(ins) > 3 else None
    past_k = ins[4] if len(ins) > 4 else None
    past_v = ins[5] if len(ins) > 5 else None
    if len(ins) > 6 and ins[6] is not None:
        raise Refusal("the Attention op's nonpad_kv_seqlen is not decomposed per head", node)
    name = f"{em.block.name}.{tag}"
    cache = em.__dict__.setdefault("_attention_shared", {})

    # -- per kv head: the keys and values this head reads, K^T once ----------------------
    kv_key = ("kv", id(node), id(k), id(v), id(past_k), id(past_v))
    if kv_key not in cache:
        present_k, present_v = k, v
        if past_k is not None:
            present_k = _op(em, "Concat", [past_k, k], {"axis": 1}, f"{name}.keys", like=k)
            present_v = _op(em, "Concat", [past_v, v], {"axis": 1}, f"{name}.values", like=v)
        k_t = _op(em, "Transpose", [present_k], {"perm": [0, 2, 1]}, f"{name}.k_transposed", like=k)
        # The present outputs are what the op returns, not what it computes with: an AIMET
        # encoding on present_key quantizes the output only. An Identity carries it.
        presents = {}
        for idx, value in ((1, present_k), (2, present_v)):
            if idx in inst.outputs:
                presents[idx] = _op(em, "Identity", [value], None, f"{name}.present", like=value,
                                    value_name=_present_name(em, tag, node, idx))
        cache[kv_key] = (present_k, present_v, k_t, presents)
    present_k, present_v, k_t, presents = cache[kv_key]

    q_dims, kt_dims = dims(node.inputs[0]), _total_keys(node)
    d = _head_dim(node, q_dims)
    scale = _attr(node, "scale")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    dtype = q.dtype.numpy() if q.dtype is not None else np.float32
    scaled_q = _op(em, "Mul", [q, _scalar(em, f"{em.block.name}.attention_scale", scale, dtype)], None,
                   f"{name}.scale_q", like=q)
    scores = _op(em, "MatMul", [scaled_q, k_t], None, f"{name}.scores", like=q)
    softcap = float(_attr(node, "softcap") or 0.0)
    if softcap > 0:
        cap = _scalar(em, f"{em.block.name}.attention_softcap", softcap, dtype)
        scores = _op(em, "Mul", [_op(em, "Tanh", [_op(em, "Div", [scores, cap], None, f"{name}.softcap_div", like=q)],
                                     None, f"{name}.softcap_tanh", like=q), cap], None, f"{name}.softcap", like=q)
    bias = _bias(em, node, mask, dtype, q_dims, kt_dims, cache, scores)
    if bias is not None:
        scores = _op(em, "Add", [scores, bias], None, f"{name}.masked", like=q)
    probs = _op(em, "Softmax", [scores], {"axis": -1}, f"{name}.probs", like=q)
    out_name = em._name(tag, node.outputs[0].name, "attn_out")
    attends = _rows_attending(em, node, mask, dtype, q_dims, kt_dims, cache, scores)
    if attends is None:
        y = _op(em, "MatMul", [probs, present_v], None, f"{name}.attention", like=q, value_name=out_name)
    else:
        y = _op(em, "MatMul", [probs, present_v], None, f"{name}.attention_all_rows", like=q)
        zero = _scalar(em, f"{em.block.name}.attention_bias.zero", 0.0, dtype)
        y = _op(em, "Where", [attends, y, zero], None, f"{name}.attention", like=q, value_name=out_name)
    return {0: y, **presents}


def _op(em, op: str, inputs, attrs, name: str, *, like: ir.Value, value_name: str | None = None) -> ir.Value:
    out = em._value(value_name or em._unique(name), like)
    em._node(op, inputs, attrs, name, [out])
    return out


def _present_name(em, tag: str, node: ir.Node, idx: int) -> str | None:
    if len(node.outputs) > idx and node.outputs[idx] is not None:
        return em._name(tag, node.outputs[idx].name, "present")
    return None


def _scalar(em, name: str, value: float, dtype) -> ir.Value:
    key = ("scalar", name, float(value), np.dtype(dtype).str)
    found = em._int_consts.get(key)
    if found is None:
        found = em._int_consts[key] = em._const(name, np.array(value, dtype=dtype))
    return found


def _attr(node: ir.Node, name: str):
    a = node.attributes.get(name)
    return None if a is None else a.value


def _head_dim(node: ir.Node, q_dims) -> int:
    if q_dims is not None and len(q_dims) == 4 and isinstance(q_dims[3], int):
        return q_dims[3]
    heads = _attr(node, "q_num_heads")
    if q_dims is not None and len(q_dims) == 3 and isinstance(q_dims[2], int) and heads:
        return q_dims[2] // heads
    raise Refusal("the Attention op's head size is not static", node)


def _total_keys(node: ir.Node):
    """Dims of the keys the scores run over (present_key if there is one, else K)."""
    if len(node.outputs) > 1 and node.outputs[1] is not None and dims(node.outputs[1]):
        return dims(node.outputs[1])
    return dims(node.inputs[1])


def _bias(em, node: ir.Node, mask, dtype, q_dims, k_dims, cache, scores: ir.Value) -> ir.Value | None:
    """The additive bias of the scores [B|1, S, T], built once per block and mask piece."""
    causal = bool(_attr(node, "is_causal") or 0)
    key = ("bias", id(node.inputs[3]) if len(node.inputs) > 3 else None, id(mask), causal)
    if key in cache:
        return cache[key]
    lowest = np.finfo(dtype).min
    name = f"{em.block.name}.attention_bias"
    s = q_dims[-2] if q_dims is not None and len(q_dims) == 4 else (q_dims[1] if q_dims else None)
    t = k_dims[2] if k_dims is not None and len(k_dims) == 4 else (k_dims[1] if k_dims else None)
    bias = None
    if mask is not None:
        mask_t = (dims(mask) or [None])[-1]
        if isinstance(mask_t, int) and isinstance(t, int) and mask_t != t:
            raise Refusal("the Attention mask covers fewer keys than the scores", node)
        if mask.dtype == ir.DataType.BOOL:
            zero = _scalar(em, f"{name}.zero", 0.0, dtype)
            fill = _scalar(em, f"{name}.lowest", lowest, dtype)
            bias = _op(em, "Where", [mask, zero, fill], None, f"{name}.from_bool_mask", like=zero)
        else:
            bias = mask
    if causal:
        if isinstance(s, int) and isinstance(t, int):
            allowed = np.arange(t)[None, :] <= np.arange(s)[:, None] + (t - s)
            causal_bias = em._const(f"{name}.causal", np.where(allowed, 0.0, lowest).astype(dtype)[None])
        else:
            causal_bias = _causal_bias_from_shape(em, scores, dtype, name)
        bias = causal_bias if bias is None else _op(em, "Add", [bias, causal_bias], None, f"{name}.combined", like=causal_bias)
    cache[key] = bias
    return bias


def _rows_attending(em, node: ir.Node, mask, dtype, q_dims, k_dims, cache, scores: ir.Value) -> ir.Value | None:
    """Bool [B|1, S|1, 1]: does the query row attend at least one key? None when every row
    provably does (no mask, and a static causal pattern without empty rows). Built once per block.

    The spec zeroes a row whose bias is all -inf: keys are masked by a False in a bool mask, a
    -inf in a float mask (a float mask of lowest is *not* masking: those rows average), or the
    causal pattern."""
    causal = bool(_attr(node, "is_causal") or 0)
    key = ("attends", id(node.inputs[3]) if len(node.inputs) > 3 else None, id(mask), causal)
    if key in cache:
        return cache[key]
    name = f"{em.block.name}.attention_rows"
    s = q_dims[-2] if q_dims is not None and len(q_dims) == 4 else (q_dims[1] if q_dims else None)
    t = k_dims[2] if k_dims is not None and len(k_dims) == 4 else (k_dims[1] if k_dims else None)
    static = isinstance(s, int) and isinstance(t, int)
    allowed = None  # float 0/1 [.., S, T] of the keys each row may attend
    if mask is not None:
        if mask.dtype == ir.DataType.BOOL:
            allowed = _op(em, "Cast", [mask], {"to": dtype_to_onnx(dtype)}, f"{name}.mask_allowed", like=scores)
        else:
            lowest = _scalar(em, f"{em.block.name}.attention_bias.lowest", np.finfo(dtype).min, dtype)
            finite = _op(em, "GreaterOrEqual", [mask, lowest], None, f"{name}.mask_finite", like=None)
            finite.dtype = ir.DataType.BOOL
            allowed = _op(em, "Cast", [finite], {"to": dtype_to_onnx(dtype)}, f"{name}.mask_allowed", like=scores)
    if causal:
        if static:
            pattern = np.arange(t)[None, :] <= np.arange(s)[:, None] + (t - s)
            if allowed is not None or not pattern.any(axis=-1).all():
                causal_allowed = em._const(f"{name}.causal_allowed", pattern.astype(dtype)[None])
                allowed = causal_allowed if allowed is None else _op(
                    em, "Mul", [allowed, causal_allowed], None, f"{name}.allowed", like=scores)
        else:
            causal_allowed = _op(em, "Cast", [_causal_allowed_from_shape(em, scores, f"{name}.causal")],
                                 {"to": dtype_to_onnx(dtype)}, f"{name}.causal_allowed", like=scores)
            allowed = causal_allowed if allowed is None else _op(
                em, "Mul", [allowed, causal_allowed], None, f"{name}.allowed", like=scores)
    result = None
    if allowed is not None:
        any_key = _op(em, "ReduceMax", [allowed, em._ints("", "axes", [-1])], {"keepdims": 1}, f"{name}.any_key", like=scores)
        result = _op(em, "Greater", [any_key, _scalar(em, f"{em.block.name}.attention_bias.zero", 0.0, dtype)],
                     None, f"{name}.attends", like=None)
        result.dtype = ir.DataType.BOOL
    cache[key] = result
    return result


def dtype_to_onnx(dtype) -> int:
    return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _causal_bias_from_shape(em, scores: ir.Value, dtype, name: str) -> ir.Value:
    """The bottom-right causal bias [S, T] for symbolic lengths, from the scores' shape
    (once per block; constant-folded by onnxruntime once the shapes are static)."""
    allowed = _causal_allowed_from_shape(em, scores, name)
    zero_f = _scalar(em, f"{name}.zero", 0.0, dtype)
    return _op(em, "Where", [allowed, zero_f, _scalar(em, f"{name}.lowest", np.finfo(dtype).min, dtype)], None,
               f"{name}.causal", like=zero_f)


def _causal_allowed_from_shape(em, scores: ir.Value, name: str) -> ir.Value:
    """Bool [S, T]: key j <= query i + (T - S), for symbolic lengths read from the scores' shape."""
    def length(axis: int) -> ir.Value:
        one = _op(em, "Shape", [scores], {"start": axis, "end": axis + 1}, f"{name}.len{axis}", like=None)
        one.dtype = ir.DataType.INT64
        return _int_op(em, "Squeeze", [one, em._ints("", "axes", [0])], f"{name}.len{axis}_scalar")

    zero = em._const(f"{name}.i0", np.array(0, dtype=np.int64))
    step = em._const(f"{name}.i1", np.array(1, dtype=np.int64))
    s, t = length(1), length(2)  # scores are [B, S, T]
    rows = _int_op(em, "Range", [zero, s, step], f"{name}.rows")
    cols = _int_op(em, "Range", [zero, t, step], f"{name}.cols")
    last_key = _int_op(em, "Add", [rows, _int_op(em, "Sub", [t, s], f"{name}.past")], f"{name}.last_key")
    allowed = _op(em, "LessOrEqual", [_int_op(em, "Unsqueeze", [cols, em._ints("", "axes", [0])], f"{name}.cols_row"),
                                      _int_op(em, "Unsqueeze", [last_key, em._ints("", "axes", [1])], f"{name}.rows_col")],
                  None, f"{name}.allowed", like=None)
    allowed.dtype = ir.DataType.BOOL
    return allowed


def _int_op(em, op: str, inputs, name: str) -> ir.Value:
    out = _op(em, op, inputs, None, name, like=None)
    out.dtype = ir.DataType.INT64
    return out
