"""The one op-axis table: for every op the converter can see through, how its input axes
become its output axes.

Every place that follows axes through a graph reads this table: the head walk
(analysis/rules.py: which input axes carry the heads of an output), the emitter (which
handler rebuilds the op for one head), the tokens rebuild (ar_tokens.py: which axes carry the
sequence) and the LoRA finder (which ops keep a one-element operand one element). Supporting a
new op means adding its entry here; an op that is not in the table stops every walk with
"no rule for <op>".

An entry says:
- ``kind``: how axes map (the list of kinds is below). Ops of one kind share one rule in
  rules.py and one handler in split/emit.py.
- ``params``: inputs that are parameters, not data (shapes, axes, Clip bounds, a
  quantization scale): they carry no axis of the data and are shared by every head as they
  are. ``scalar_params`` says that those parameters must hold one element for the axis map
  to hold (a per-tensor QuantizeLinear scale; a per-channel one moves with its axis).
- ``outputs``: which outputs follow the data (Split's outputs, Dropout's mask,
  LayerNormalization's mean and inverse deviation); other outputs stop a walk.
- ``forward``: the op may be walked downward between the attention core and the point where
  the heads are merged back into channels (layout ops and value-preserving casts only).
- ``heads``: the head walk sees through the op (False: only the tokens rebuild follows the
  sequence axis through it; the head walk stops with "no rule for <op>" as before).

Kinds (input 0 is the data unless the kind says otherwise):
  elementwise  output axes = the numpy broadcast of the data inputs (unary ops, binary and
               variadic arithmetic, comparisons, casts, QuantizeLinear/DequantizeLinear)
  softmax      same axes as the input; works along ``axis`` (opset < 13: ``axis`` and after)
  norm         same axes as the input; works along ``axis`` and after; scale/bias broadcast
  along        same axes as the input; works along axes named by the op (CumSum, Trilu,
               RotaryEmbedding)
  reshape      regroups the digits of the axes (Reshape, Flatten)
  unsqueeze / squeeze   inserts / removes size-1 axes
  transpose    permutes the axes by ``perm``
  expand / tile         broadcast / repeat axes
  concat / split / slice   one axis is joined / cut / windowed, the others pass through
  gather       the indexed axis is replaced by the index's axes
  reduce       the reduced axes become size 1 (keepdims) or disappear
  matmul       batch axes broadcast, [.., M, K] x [.., K, N] -> [.., M, N]
Kinds only the tokens rebuild reads (``heads=False``):
  gemm / conv  rows of A / the batch (and 1x1 spatial axes) pass through to the output
  gathernd / scatternd   GatherND: the index axes (but the last) then the data axes after
               the indexed ones; ScatterND: the output has the data's axes, the updates' axes
               are the index axes (but the last) then the data axes after the indexed ones
  scatterelements  the output has the data's axes; indices and updates share theirs
  attention    the opset-23 Attention op (past inputs are the cache)
  range / fill an output axis made from scalars or a shape operand (Range, ConstantOfShape)
  nodata       the outputs carry no axis of the data (Shape, Size, Constant)
  argreduce    ArgMax / ArgMin: ``axis`` becomes size 1 (keepdims) or disappears
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

ELEMENTWISE_KIND = "elementwise"


@dataclass(frozen=True)
class OpAxes:
    kind: str
    params: tuple[int, ...] = ()
    scalar_params: bool = False
    outputs: tuple[int, ...] | None = (0,)  # None: every output
    forward: bool = False
    heads: bool = True
    unary: bool = False  # elementwise with one data input: the output has exactly its axes

    def is_param(self, index: int) -> bool:
        return index in self.params


def _ew(*names: str, **fields) -> dict[str, OpAxes]:
    return {n: OpAxes(ELEMENTWISE_KIND, **fields) for n in names}


def _unary(*names: str, **fields) -> dict[str, OpAxes]:
    return _ew(*names, unary=True, **fields)


# The table. Keep one entry per op; group by kind.
TABLE: dict[str, OpAxes] = {
    # -- elementwise: unary --------------------------------------------------------
    **_unary("Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu",
          "Gelu", "Sin", "Cos", "IsNaN", "IsInf", "Not", "Floor", "Ceil", "Round", "Sign",
          "Softplus", "Elu", "Selu", "LeakyRelu", "HardSigmoid", "HardSwish", "Mish", "Silu",
          "QuickGelu", "BitwiseNot", "Softsign"),
    **_unary("Cast", "Identity", forward=True),
    **_unary("CastLike", params=(1,)),  # input 1 only names the type
    **_unary("Clip", params=(1, 2)),  # bounds are scalars by the spec
    **_unary("Dropout", params=(1, 2), outputs=(0, 1), forward=True),
    # QDQ: a per-tensor scale and zero point are shared by every head; per-axis or blocked
    # ones are not (refused with the reason, the walk stops there).
    **_unary("QuantizeLinear", "DequantizeLinear", params=(1, 2), scalar_params=True, forward=True),
    # -- elementwise: broadcasting binary and variadic --------------------------------
    **_ew("Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "PRelu",
          "Where", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or",
          "Xor", "BitShift", "FastGelu", "BiasGelu"),
    # -- same axes, working along some of them ------------------------------------------
    "Softmax": OpAxes("softmax"),
    "LogSoftmax": OpAxes("softmax"),
    "LayerNormalization": OpAxes("norm", outputs=(0, 1, 2)),
    "RMSNormalization": OpAxes("norm"),
    "SimplifiedLayerNormalization": OpAxes("norm"),
    "CumSum": OpAxes("cumsum", params=(1,)),
    "Trilu": OpAxes("trilu", params=(1,)),
    "RotaryEmbedding": OpAxes("rotary", params=(1, 2, 3)),
    # -- layout ----------------------------------------------------------------------
    "Reshape": OpAxes("reshape", params=(1,), forward=True),
    "Flatten": OpAxes("reshape", forward=True),
    "Unsqueeze": OpAxes("unsqueeze", params=(1,), forward=True),
    "Squeeze": OpAxes("squeeze", params=(1,), forward=True),
    "Transpose": OpAxes("transpose", forward=True),
    "Expand": OpAxes("expand", params=(1,)),
    "Tile": OpAxes("tile", params=(1,)),
    # -- one axis joined, cut or picked ------------------------------------------------
    "Concat": OpAxes("concat"),
    "Split": OpAxes("split", params=(1,), outputs=None),
    "Slice": OpAxes("slice", params=(1, 2, 3, 4)),
    "Gather": OpAxes("gather"),  # the indices (input 1) are data: their axes enter the output
    # -- reductions --------------------------------------------------------------------
    **{n: OpAxes("reduce", params=(1,)) for n in (
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL2")},
    # -- contraction -------------------------------------------------------------------
    "MatMul": OpAxes("matmul"),
    # -- seen through by the tokens rebuild only (heads=False) ---------------------------
    **{n: OpAxes("reduce", params=(1,), heads=False) for n in (
        "ReduceProd", "ReduceL1", "ReduceLogSumExp", "ReduceLogSum")},
    "ArgMax": OpAxes("argreduce", heads=False),
    "ArgMin": OpAxes("argreduce", heads=False),
    "SkipLayerNormalization": OpAxes("norm", heads=False),
    "SkipSimplifiedLayerNormalization": OpAxes("norm", heads=False),
    "Gemm": OpAxes("gemm", heads=False),
    "Conv": OpAxes("conv", params=(1, 2), heads=False),
    "GatherND": OpAxes("gathernd", heads=False),  # the indices (input 1) are data
    "ScatterND": OpAxes("scatternd", heads=False),
    "ScatterElements": OpAxes("scatterelements", heads=False),
    "Attention": OpAxes("attention", outputs=None, heads=False),
    "Range": OpAxes("range", params=(0, 1, 2), heads=False),
    "ConstantOfShape": OpAxes("fill", params=(0,), heads=False),
    "Shape": OpAxes("nodata", heads=False),
    "Size": OpAxes("nodata", heads=False),
    "Constant": OpAxes("nodata", heads=False),
}

# Ops from these domains are looked up in the table; any other domain stops the walk.
DOMAINS = ("", "ai.onnx", "com.microsoft")

ELEMENTWISE: frozenset[str] = frozenset(op for op, e in TABLE.items() if e.kind == ELEMENTWISE_KIND)
HEADS: frozenset[str] = frozenset(op for op, e in TABLE.items() if e.heads)
UNARY: frozenset[str] = frozenset(op for op in ELEMENTWISE if TABLE[op].unary)
FORWARD: frozenset[str] = frozenset(op for op, e in TABLE.items() if e.forward)


def lookup(node: ir.Node) -> OpAxes | None:
    """The entry of ``node``'s op, or None when the walk cannot see through it."""
    if node.domain not in DOMAINS:
        return None
    return TABLE.get(node.op_type)


def kind_of(op_type: str) -> str | None:
    entry = TABLE.get(op_type)
    return None if entry is None else entry.kind


def data_inputs(node: ir.Node, entry: OpAxes) -> list[int]:
    """Indices of the inputs that carry the data's axes (present, not parameters)."""
    return [i for i, v in enumerate(node.inputs) if v is not None and not entry.is_param(i)]


__all__ = ["OpAxes", "TABLE", "DOMAINS", "ELEMENTWISE", "HEADS", "UNARY", "FORWARD", "lookup", "kind_of", "data_inputs"]
