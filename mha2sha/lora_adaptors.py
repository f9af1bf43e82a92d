"""LoRA adaptors: find LoRA branches by structure, and convert adaptor weights and encodings
to the SHA model's tensor names.

On device, one base graph serves several LoRA adaptors: the adaptor weights are "updatable"
tensors whose values are swapped at run time. After the MHA -> SHA split those tensors have
new names and shapes (each head's lora_B output channels are a weight of their own, lora_A
is shared), so every adaptor must be converted the same way the converter converted the
model's own LoRA weights.

The adaptor list (YAML)
-----------------------
Either the QAIRT LoRA importer's form, a top-level ``use_case`` list::

    use_case:
      - name: french
        lora_weights: adaptors/french.safetensors     # required
        quant_overrides: adaptors/french.encodings    # optional AIMET encodings
      - name: legal
        lora_weights: adaptors/legal.safetensors

or the same entries under ``adaptors:`` / ``adapters:``, or a bare list. ``weights`` /
``safetensors`` are accepted for ``lora_weights`` and ``encodings`` for ``quant_overrides``.
Relative paths are relative to the YAML file's folder. Names must be unique.

How an adaptor tensor is matched to the graph (the contract)
------------------------------------------------------------
Each key of an adaptor's safetensors file is the **name of an initializer of the ONNX model
as it was given to the converter** (the MHA model, e.g.
``model.layers.0.self_attn.q_proj.lora_A.weight`` or ``onnx::MatMul_597``), and its value has
**exactly that initializer's shape** (the layout the graph uses: [in, r] for a MatMul lora_A,
[r, in, 1, 1] for a Conv one). PEFT adaptors are the exception: ``lora_weights`` names a PEFT
folder (``adapter_model.safetensors`` + ``adapter_config.json``) or its safetensors file, and
its keys (module paths, torch layouts, scaling lora_alpha / r) are mapped onto the graph's LoRA
branches first, by structure and by the module path the export kept (mha2sha.peft_adaptors).
A float dtype other than the
initializer's is cast to it (reported); every other mismatch is an error naming the tensor.
Every adaptor must provide the same set of tensors: an adaptor applied after another must
overwrite every tensor the other one set.

Each tensor becomes what the converter made of the model's own initializer of that name:
the per-head slices recorded in the split (lora_B: its output channels per head / per kv
head), the unchanged tensor where the name survives (lora_A, alpha, weights outside
attention), relaid out for Conv where linear->conv converted the projection. The
conversion is checked on the model's own values: applied to the MHA model's initializer it
must give the SHA model's initializers exactly.

What is written (beside the model)
----------------------------------
``adaptor_<name>.safetensors`` (SHA names), ``adaptor_<name>.encodings`` (the adaptor's
encodings carried onto the SHA names like the model's own, when it has encodings),
``lora_tensor_names.txt`` (every SHA tensor an adaptor updates, one per line: the list
``qairt-converter --lora_weight_list`` takes) and ``lora_adaptors.yaml`` (the list again, in
the ``use_case`` form, pointing at the converted files).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from mha2sha.analysis import opaxes
from mha2sha.errors import InputError, OutputError
from mha2sha.graph.build import LINEAR_OPS, linear_weight
from mha2sha.graph.ir_utils import attr, const_tensor, dims, is_const

TENSOR_NAMES_FILE = "lora_tensor_names.txt"
ADAPTOR_LIST_FILE = "lora_adaptors.yaml"

# ---------------------------------------------------------------------------------------------
# safetensors files, through the ``safetensors`` library (numpy framework)
# ---------------------------------------------------------------------------------------------


class SafetensorsError(InputError, ValueError):
    """A safetensors file that cannot be read (the library's reason in the message)."""


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file. BF16 tensors are returned as float32
    (exactly: a bfloat16 is the upper half of a float32); every other dtype as stored.
    Unreadable or malformed files raise SafetensorsError."""
    import ml_dtypes
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {}
            for name in fh.keys():
                arr = fh.get_tensor(name)
                tensors[name] = arr.astype(np.float32) if arr.dtype == ml_dtypes.bfloat16 else arr
    except OSError as exc:
        raise SafetensorsError(path, f"cannot read: {exc.strerror or exc}") from None
    except (SafetensorError, ValueError, TypeError) as exc:
        raise SafetensorsError(path, f"not a valid safetensors file: {exc}") from None
    return tensors, metadata


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file (the library's writer), synced to disk."""
    from safetensors.numpy import save

    arrays = {name: np.ascontiguousarray(value) if np.ndim(value) else np.asarray(value) for name, value in tensors.items()}
    raw = save(arrays, metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)
    with open(path, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------------
# The adaptor list
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptorSpec:
    name: str
    weights: Path
    encodings: Path | None = None
    peft_config: Path | None = None  # adapter_config.json of a PEFT adaptor (mha2sha.peft_adaptors)


_WEIGHT_KEYS = ("lora_weights", "weights", "safetensors")
_ENCODING_KEYS = ("quant_overrides", "encodings")


def read_adaptor_list(path: str | os.PathLike) -> list[AdaptorSpec]:
    """The adaptors a YAML list names (see the module docstring for the accepted forms).
    Files must exist; names must be unique and usable as file names."""
    import yaml

    from mha2sha.graph.io import safe_output_name

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(path, f"cannot read the adaptor list: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"the adaptor list is not valid YAML: {exc}") from None
    entries = doc
    if isinstance(doc, dict):
        keys = [k for k in ("use_case", "adaptors", "adapters") if k in doc]
        if len(keys) != 1:
            raise InputError(path, "the adaptor list needs exactly one of the keys use_case, adaptors, adapters (a list of adaptors)")
        entries = doc[keys[0]]
    if not isinstance(entries, list) or not entries:
        raise InputError(path, "the adaptor list must be a non-empty list of adaptors")
    base = path.resolve().parent
    specs: list[AdaptorSpec] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"adaptor {i + 1}"
        if not isinstance(entry, dict):
            raise InputError(path, f"{where}: an adaptor is a mapping with name and lora_weights")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InputError(path, f"{where}: missing name")
        where = f"adaptor {name!r}"
        unknown = set(entry) - {"name", *_WEIGHT_KEYS, *_ENCODING_KEYS}
        if unknown:
            raise InputError(path, f"{where}: unknown keys {sorted(unknown)}")
        safe = safe_output_name(name)
        if safe in seen:
            raise InputError(path, f"{where}: the name is already used by adaptor {seen[safe]!r} (names must differ as file names)")
        seen[safe] = name
        weights = _one_of(entry, _WEIGHT_KEYS, path, where, required=True)
        encodings = _one_of(entry, _ENCODING_KEYS, path, where, required=False)
        w = _resolve(base, weights, path, where, folder=True)
        config = None
        if w.is_dir() or (w.parent / "adapter_config.json").is_file():
            from mha2sha.peft_adaptors import peft_files

            w, config = peft_files(w)
            if not w.is_file():
                raise InputError(path, f"{where}: file not found: {w}")
        e = _resolve(base, encodings, path, where) if encodings is not None else None
        specs.append(AdaptorSpec(name, w, e, config))
    return specs


def _one_of(entry: dict, keys, path, where, *, required: bool):
    present = [k for k in keys if k in entry and entry[k] is not None]
    if len(present) > 1:
        raise InputError(path, f"{where}: give only one of {', '.join(present)}")
    if not present:
        if required:
            raise InputError(path, f"{where}: missing {keys[0]} (the adaptor's safetensors file)")
        return None
    value = entry[present[0]]
    if not isinstance(value, str):
        raise InputError(path, f"{where}: {present[0]} must be a path")
    return value


def _resolve(base: Path, value: str, path, where, *, folder: bool = False) -> Path:
    p = Path(os.path.expanduser(value))
    p = p if p.is_absolute() else base / p
    if not (p.is_file() or (folder and p.is_dir())):
        raise InputError(path, f"{where}: file not found: {p}")
    return p


# ---------------------------------------------------------------------------------------------
# LoRA branches, found by structure
# ---------------------------------------------------------------------------------------------

_LINEAR = LINEAR_OPS


@dataclass
class LoraBranch:
    """``add = base + alpha * B(A(x))`` on a projection: the nodes and values of one branch.

    ``slot``: the branch's position in the chain of adaptors added to its projection (0 for
    the first); the same slot on every projection is the same adaptor in PEFT-style exports.
    ``alpha`` is None when the branch has no scalar multiplier.
    """

    base: ir.Node  # the projection the branch adapts
    a_node: ir.Node
    b_node: ir.Node
    a_weight: ir.Value
    b_weight: ir.Value
    add: ir.Node
    mul: ir.Node | None
    alpha: ir.Value | None
    slot: int
    rank: int


def _scalar_operand(node: ir.Node, other: ir.Value) -> ir.Value | None:
    """The operand of a binary Mul that is not ``other``, if it holds a single element."""
    if node.op_type != "Mul" or len(node.inputs) != 2:
        return None
    cand = node.inputs[1] if node.inputs[0] is other else node.inputs[0]
    if cand is None or cand is other:
        return None
    return cand if _is_scalar(cand) else None


def _is_scalar(value: ir.Value, depth: int = 0) -> bool:
    """Whether ``value`` holds one element: from its shape, or (shapes not inferred) from
    elementwise ops of one-element operands."""
    d = dims(value)
    if d is not None and all(isinstance(x, int) for x in d):
        return math.prod(d) == 1
    if is_const(value):  # a Constant node's output before shape inference (TorchScript scalings)
        return math.prod(int(x) for x in const_tensor(value).shape) == 1
    node = value.producer()
    if node is None or depth > 8 or node.op_type not in opaxes.ELEMENTWISE:
        return False
    return all(v is not None and _is_scalar(v, depth + 1) for v in node.inputs if v is not None)


def _delta(value: ir.Value) -> tuple[ir.Node | None, ir.Value | None, ir.Node, ir.Node, ir.Value, int] | None:
    """``value`` = [alpha *] B(A(x)): (mul, alpha, a_node, b_node, x, rank)."""
    node = value.producer()
    if node is None:
        return None
    mul = alpha = None
    if node.op_type == "Mul":
        for cand in node.inputs:
            if cand is None or cand.producer() is None:
                continue
            scalar = _scalar_operand(node, cand)
            if scalar is not None and cand.producer().op_type in _LINEAR:
                mul, alpha, node = node, scalar, cand.producer()
                break
        else:
            return None
    b = linear_weight(node)
    if b is None or b.data.producer() is None:
        return None
    a_node = b.data.producer()
    a = linear_weight(a_node)
    if a is None:
        return None
    rank = b.in_channels
    if a.out_channels != rank or not rank < min(a.in_channels, b.out_channels):
        return None
    if len(b.data.uses()) != 1 or (mul is not None and len(node.outputs[0].uses()) != 1):
        return None
    return mul, alpha, a_node, node, a.data, rank


def _base_projection(value: ir.Value, x: ir.Value) -> tuple[ir.Node, int] | None:
    """The projection reading ``x`` that ``value`` comes from: through a bias Add and
    earlier LoRA Adds. Returns (projection, number of LoRA Adds passed)."""
    passed = 0
    for _ in range(64):
        node = value.producer()
        if node is None:
            return None
        lin = linear_weight(node)
        if lin is not None and lin.data is x:
            return node, passed
        if node.op_type != "Add" or len(node.inputs) != 2:
            return None
        u, v = node.inputs
        if is_const(v) or is_const(u):  # a bias
            value = u if is_const(v) else v
            continue
        if _delta(v) is not None and _delta(v)[4] is x:
            value, passed = u, passed + 1
        elif _delta(u) is not None and _delta(u)[4] is x:
            value, passed = v, passed + 1
        else:
            return None
    return None


def find_lora_branches(graph: ir.Graph) -> list[LoraBranch]:
    """Every LoRA branch of the graph, by structure only: an Add of a projection's output
    (after its bias and earlier branches) and ``[alpha *] B(A(x))`` where A and B are
    MatMul / Gemm / 1x1 Conv with constant weights, A reads the projection's own input, the
    inner width (rank) is smaller than both A's input and B's output width, and alpha, when
    present, is a one-element operand of a Mul on B's output."""
    found: list[LoraBranch] = []
    for node in graph:
        if node.op_type != "Add" or len(node.inputs) != 2 or any(v is None for v in node.inputs):
            continue
        for side in (1, 0):
            delta = _delta(node.inputs[side])
            if delta is None:
                continue
            mul, alpha, a_node, b_node, x, rank = delta
            base = _base_projection(node.inputs[1 - side], x)
            if base is None:
                continue
            found.append(LoraBranch(base[0], a_node, b_node, a_node.inputs[1], b_node.inputs[1], node, mul, alpha, base[1], rank))
            break
    return found


# ---------------------------------------------------------------------------------------------
# MHA names -> SHA names
# ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One SHA tensor made from an MHA initializer: ``np.take(source, indices, axis)``
    (everything when axis is None), reshaped to ``shape`` before the Conv relayout,
    then laid out for Conv (``conv``: "transpose" for a [in, out] weight, "reshape" for
    [out, in]) and multiplied by ``scale`` (a Gemm's alpha folded by linear->conv)."""

    name: str
    axis: int | None
    indices: tuple[int, ...]
    shape: tuple[int, ...]
    conv: str | None = None
    scale: float = 1.0

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = array if self.axis is None else np.take(array, list(self.indices), axis=self.axis)
        out = out.reshape(self.shape)
        if self.conv == "transpose":
            out = out.T.reshape(out.shape[1], out.shape[0], 1, 1)
        elif self.conv == "reshape":
            out = out.reshape(out.shape[0], out.shape[1], 1, 1)
        if self.scale != 1.0:
            out = (out * self.scale).astype(array.dtype)
        return np.array(out, order="C", copy=True)


@dataclass
class WeightNameMap:
    """For each MHA initializer name, the SHA tensors the converter made of it."""

    sources: dict[str, tuple[tuple[int, ...], ir.DataType]] = field(default_factory=dict)  # name -> (shape, dtype)
    targets: dict[str, list[Target]] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)  # name -> why it has no SHA tensor

    def convert(self, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
        return {t.name: t.apply(array) for t in self.targets[name]}


def _initializer_values(model: ir.Model) -> dict[str, ir.Value]:
    return {name: v for name, v in model.graph.initializers.items() if v.const_value is not None}


def _consumer(value: ir.Value, op_types) -> ir.Node | None:
    for use in value.uses():
        if use.node.op_type in op_types:
            return use.node
    return None


def build_weight_map(original: ir.Model, converted: ir.Model, ledger, *, names: Iterable[str] | None = None, check: bool = True) -> WeightNameMap:
    """How each MHA initializer (all of them, or ``names``) becomes SHA initializers,
    from the conversion ledger (mha2sha.ledger: the split's weight slices, linear->conv's relayouts).

    ``check``: apply each conversion to the MHA model's own value and compare with the
    SHA model's initializer (raises ValueError on a difference: the records do not describe
    what the converter did)."""
    before = _initializer_values(original)
    after = _initializer_values(converted)
    slices = ledger.weight_slices()
    conv_weights = {w: (r.target, r.old_axis, r.new_axis) for w, r in ledger.relayouts().items()}
    conv_biases = ledger.renamed()
    wanted = list(before) if names is None else list(names)
    out = WeightNameMap()
    for name in wanted:
        value = before.get(name)
        if value is None:
            continue
        tensor = value.const_value
        shape = tuple(int(d) for d in tensor.shape)
        out.sources[name] = (shape, tensor.dtype)
        # (intermediate name, axis, indices, shape after the split)
        pieces: list[tuple[str, int | None, tuple[int, ...], tuple[int, ...]]] = []
        for ps in slices.get(name, []):
            axis = None if ps.axis < 0 else ps.axis
            if axis is None:
                piece_shape = shape
            else:
                piece_shape = tuple(len(ps.indices) if i == axis else d for i, d in enumerate(shape))
            pieces.append((ps.target, axis, tuple(ps.indices), piece_shape))
        if name in after or name in conv_weights or name in conv_biases:
            pieces.append((name, None, (), shape))
        targets: list[Target] = []
        alpha = 1.0
        gemm = _consumer(value, ("Gemm",))
        if gemm is not None:
            alpha = float(attr(gemm, "alpha", 1.0))
        for inter, axis, indices, piece_shape in pieces:
            final, layout, scale = inter, None, 1.0
            if inter in conv_weights:
                final, old_axis, _ = conv_weights[inter]
                layout = "reshape" if old_axis == 0 else "transpose"
                scale = alpha
            elif inter in conv_biases:
                final = conv_biases[inter]
            target_value = after.get(final)
            if target_value is None:
                continue
            final_shape = tuple(int(d) for d in target_value.const_value.shape)
            if math.prod(piece_shape) != math.prod(final_shape):
                raise ValueError(f"{name!r} -> {final!r}: {piece_shape} does not fit {final_shape}")
            if layout is None:
                piece_shape = final_shape  # axes the split squeezed away
            elif len(piece_shape) != 2:
                raise ValueError(f"{name!r} -> {final!r}: a Conv relayout of a {len(piece_shape)}-D tensor")
            targets.append(Target(final, axis, indices, piece_shape, layout, scale))
        if targets:
            out.targets[name] = targets
        else:
            out.removed[name] = "the conversion removed it and nothing stands for it"
        if check and targets:
            src = tensor.numpy()
            for t in targets:
                got = t.apply(src)
                want = after[t.name].const_value.numpy()
                if got.shape != want.shape or not np.array_equal(got, want):
                    raise ValueError(f"converting {name!r} into {t.name!r} does not reproduce the converted model's tensor")
    return out


# ---------------------------------------------------------------------------------------------
# Adaptors
# ---------------------------------------------------------------------------------------------


@dataclass
class ConvertedAdaptor:
    name: str
    tensors: dict[str, np.ndarray]  # SHA name -> value
    sources: list[str]  # MHA names the adaptor set
    cast: list[str] = field(default_factory=list)  # tensors cast to the model's dtype
    encodings: object | None = None  # mha2sha.encodings.EncodingSet on SHA names
    encodings_summary: dict | None = None
    peft: dict | None = None  # a PEFT adaptor: modules mapped, alpha inputs to feed, notes


@dataclass
class AdaptorConversion:
    adaptors: list[ConvertedAdaptor]
    tensor_names: list[str]  # every SHA tensor an adaptor updates, in the model's order
    files: dict[str, Path] = field(default_factory=dict)  # file name -> where it was placed


def convert_adaptor_tensors(name: str, tensors: Mapping[str, np.ndarray], weight_map: WeightNameMap) -> ConvertedAdaptor:
    """One adaptor's weights under the SHA names (see the module docstring for the rules)."""
    out: dict[str, np.ndarray] = {}
    cast: list[str] = []
    for key, array in tensors.items():
        if key not in weight_map.sources:
            raise InputError(None, f"adaptor {name!r}: tensor {key!r} is not an initializer of the model (adaptor tensors are named as the model's initializers)")
        shape, dtype = weight_map.sources[key]
        array = np.asarray(array)
        if tuple(array.shape) != shape:
            raise InputError(None, f"adaptor {name!r}: tensor {key!r} has shape {list(array.shape)}, the model's initializer {list(shape)}")
        np_dtype = np.dtype(dtype.numpy())
        if array.dtype != np_dtype:
            if array.dtype.kind == "f" and np_dtype.kind == "f":
                array = array.astype(np_dtype)
                cast.append(key)
            else:
                raise InputError(None, f"adaptor {name!r}: tensor {key!r} is {array.dtype}, the model's initializer {np_dtype}")
        if key not in weight_map.targets:
            raise InputError(None, f"adaptor {name!r}: tensor {key!r}: {weight_map.removed.get(key, 'no tensor of the converted model stands for it')}")
        for target, value in weight_map.convert(key, array).items():
            if target in out:
                raise InputError(None, f"adaptor {name!r}: two tensors map onto {target!r}")
            out[target] = value
    return ConvertedAdaptor(name, out, list(tensors), cast)


def convert_adaptors(adaptors: str | os.PathLike | list[AdaptorSpec], output, *, original: ir.Model, converted: ir.Model, split=None, conv=None,
                     encodings_version: str | None = None, ledger=None) -> AdaptorConversion:
    """Convert every adaptor of a YAML list (or of ``adaptors`` given as specs) to the SHA
    model and write the files described in the module docstring into ``output``: a
    ``mha2sha.graph.io.StagedOutput`` (the caller commits it with the model) or a folder
    (written atomically here).

    ``original``: the MHA model as given to the converter (names and values are read from it);
    ``converted``, ``ledger``: the SHA model and the conversion's ledger (mha2sha.ledger);
    or, instead of the ledger, the ``SplitResult`` and the linear->conv ``ConvRecord`` (or None).
    """
    from mha2sha.graph.io import StagedOutput, prepare_output_dir

    if ledger is None:
        from mha2sha.ledger import Ledger
        from mha2sha.passes.linear_to_conv import ledger_entries

        ledger = Ledger(list(split.ledger.entries) + (ledger_entries(conv) if conv is not None else []))

    specs = read_adaptor_list(adaptors) if not isinstance(adaptors, list) else list(adaptors)
    if not specs:
        raise InputError(None, "no adaptors to convert")
    loaded: list[tuple[AdaptorSpec, dict[str, np.ndarray]]] = []
    peft_notes: dict[str, dict] = {}
    initializer_names = set(original.graph.initializers)
    for spec in specs:
        tensors, _ = read_safetensors(spec.weights)
        if not tensors:
            raise InputError(spec.weights, f"adaptor {spec.name!r} holds no tensors")
        from mha2sha.peft_adaptors import is_peft_adaptor, map_peft_adaptor, read_peft_config

        if spec.peft_config is not None or is_peft_adaptor(tensors, initializer_names):
            # PEFT keys (module paths, torch layouts): onto the graph's LoRA branches first.
            if spec.peft_config is None:
                raise InputError(spec.weights, f"adaptor {spec.name!r} has PEFT key names but no adapter_config.json beside it (r and lora_alpha are needed)")
            mapped = map_peft_adaptor(spec.name, tensors, read_peft_config(spec.peft_config), find_lora_branches(original.graph))
            tensors = mapped.tensors
            peft_notes[spec.name] = {"modules": len(mapped.modules), "alpha_inputs": mapped.alpha_inputs, "notes": mapped.notes[:8]}
        loaded.append((spec, tensors))
    keys = set(loaded[0][1])
    for spec, tensors in loaded[1:]:
        if set(tensors) != keys:
            missing = sorted(keys - set(tensors))[:3]
            extra = sorted(set(tensors) - keys)[:3]
            raise InputError(spec.weights, f"adaptor {spec.name!r} does not set the same tensors as adaptor {loaded[0][0].name!r} (missing {missing}, extra {extra}); every adaptor must set the same tensors")
    names = sorted(set().union(*(set(t) for _, t in loaded)))
    weight_map = build_weight_map(original, converted, ledger, names=names)
    results: list[ConvertedAdaptor] = []
    for spec, tensors in loaded:
        result = convert_adaptor_tensors(spec.name, tensors, weight_map)
        result.peft = peft_notes.get(spec.name)
        if spec.encodings is not None:
            from mha2sha.encodings import propagate, read_encodings

            try:
                enc = read_encodings(spec.encodings)
            except ValueError as exc:
                raise InputError(spec.encodings, str(exc)) from None
            result.encodings, result.encodings_summary = propagate(enc, original, converted, ledger)
        results.append(result)
    order = {name: i for i, name in enumerate(converted.graph.initializers)}
    tensor_names = sorted(set().union(*(set(r.tensors) for r in results)), key=lambda n: (order.get(n, len(order)), n))

    own_staging = not isinstance(output, StagedOutput)
    staged = output
    if own_staging:
        inputs = [s.weights for s in specs] + [s.encodings for s in specs if s.encodings is not None]
        out_dir = prepare_output_dir(output, inputs)
        staged = StagedOutput(out_dir, inputs)
    try:
        files = write_adaptor_files(staged, results, tensor_names, encodings_version=encodings_version)
        placed = staged.commit() if own_staging else {f: staged.out_dir / f for f in files}
    except OSError as exc:
        if own_staging:
            staged.discard()
        raise OutputError(staged.out_dir, f"cannot write the adaptors: {exc.strerror or exc}") from None
    except BaseException:
        if own_staging:
            staged.discard()
        raise
    return AdaptorConversion(results, tensor_names, {f: placed[f] for f in files if f in placed})


def adaptor_file_names(name: str) -> tuple[str, str]:
    from mha2sha.graph.io import safe_output_name

    safe = safe_output_name(name)
    return f"adaptor_{safe}.safetensors", f"adaptor_{safe}.encodings"


def write_adaptor_files(staged, results: list[ConvertedAdaptor], tensor_names: list[str], *, encodings_version: str | None = None) -> list[str]:
    """Write the converted adaptors, the tensor-name list and the adaptor list into a
    StagedOutput; returns the file names."""
    import yaml

    files: list[str] = []
    entries = []
    for r in results:
        weights_file, enc_file = adaptor_file_names(r.name)
        ordered = {n: r.tensors[n] for n in tensor_names if n in r.tensors}
        write_safetensors(staged.path(weights_file), ordered, {"adaptor": r.name, "format": "np"})
        files.append(weights_file)
        entry = {"name": r.name, "lora_weights": weights_file}
        if r.encodings is not None:
            from mha2sha.encodings import write_encodings

            write_encodings(r.encodings, staged.path(enc_file), version=encodings_version)
            files.append(enc_file)
            entry["quant_overrides"] = enc_file
        entries.append(entry)
    with open(staged.path(TENSOR_NAMES_FILE), "w") as fh:
        fh.write("".join(f"{n}\n" for n in tensor_names))
    files.append(TENSOR_NAMES_FILE)
    with open(staged.path(ADAPTOR_LIST_FILE), "w") as fh:
        yaml.safe_dump({"use_case": entries}, fh, sort_keys=False)
    files.append(ADAPTOR_LIST_FILE)
    return files
