"""Pre-quantization adaptation, and the one mapping from AIMET export names to final names.

The graph changes that must happen before a model is quantized (``--skip-mha2sha`` runs
them alone, so that AIMET quantizes the adapted model):

- ``--lora-alpha-from-input``: every LoRA branch's alpha (the one-element multiplier on the
  lora_B output, found by structure: mha2sha.lora_adaptors.find_lora_branches) becomes a
  graph input, so that the runtime can set it (0 switches an adaptor off). Branches are
  grouped by their slot (the k-th adaptor added to a projection is slot k on every
  projection): one input per slot, ``lora_alpha`` for a single slot and ``lora_alpha_<k>``
  otherwise, fed with the constant it replaces. A slot whose constants differ gets one input
  per distinct value (``lora_alpha_<k>_<j>``), so that feeding the returned values always
  reproduces the original model. A branch without a multiplier gets one (fed 1.0). Alphas
  that already come from the graph's inputs are left as they are.
- dead-node removal (nodes whose outputs nothing reads, unread initializers);
- topological order.

``prequant_encodings_map.json`` records ``{original name: [new names]}`` for every name the
adaptation changed: a lifted alpha constant maps to its graph input, a removed tensor to
``[]``. Names not listed are unchanged.

``merge_mappings`` chains the mapping files of all stages (this one,
``mha_to_sha_encodings_names.json``, the linear->conv record) into
``all_stages_encodings_mapping.json``: original name -> the names it has in the final model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from mha2sha.errors import UsageError
from mha2sha.graph.build import fresh_name, tensor_names
from mha2sha.graph.ir_utils import const_array, is_const

PREQUANT_MAP_FILE = "prequant_encodings_map.json"
ALL_STAGES_FILE = "all_stages_encodings_mapping.json"


@dataclass
class PrequantResult:
    model: ir.Model
    mapping: dict[str, list[str]] = field(default_factory=dict)  # original -> new names (changed names only)
    alpha_inputs: dict[str, np.ndarray] = field(default_factory=dict)  # new graph input -> the value that reproduces the original
    removed_nodes: int = 0
    notes: list[str] = field(default_factory=list)


def model_names(model: ir.Model) -> set[str]:
    """Every tensor name of the model: inputs, initializers, node outputs."""
    return tensor_names(model.graph)


def lift_lora_alpha(model: ir.Model) -> tuple[dict[str, list[str]], dict[str, np.ndarray], list[str]]:
    """Make every LoRA alpha a graph input (see the module docstring).

    Returns (name mapping, {new input: value that reproduces the original}, notes)."""
    from mha2sha.lora_adaptors import find_lora_branches
    from mha2sha.passes.shapes import infer_shapes

    graph = model.graph
    try:
        infer_shapes(model, only_missing=True)
    except Exception:  # noqa: BLE001 - shapes only help to recognise one-element alphas
        pass
    branches = find_lora_branches(graph)
    if not branches:
        raise UsageError(None, "--lora-alpha-from-input: no LoRA branch found (an Add of a projection's output and B(A(x)) with a low-rank inner width)")
    notes: list[str] = []
    # slot -> [(branch, value or None for "no multiplier")]
    groups: dict[int, list] = {}
    already = 0
    for b in branches:
        if b.alpha is None:
            groups.setdefault(b.slot, []).append((b, None))
        elif is_const(b.alpha):
            groups.setdefault(b.slot, []).append((b, np.asarray(const_array(b.alpha))))
        else:
            already += 1
    if already:
        notes.append(f"{already} LoRA branch(es) already read alpha from the graph's inputs")
    taken = model_names(model)
    mapping: dict[str, list[str]] = {}
    feeds: dict[str, np.ndarray] = {}
    single = len(groups) == 1
    for slot in sorted(groups):
        members = groups[slot]
        distinct: list[np.ndarray] = []
        for _, value in members:
            key = np.float64(1.0) if value is None else value.reshape(-1)[0]
            if not any(np.array_equal(key, d) for d in distinct):
                distinct.append(key)
        base = "lora_alpha" if single else f"lora_alpha_{slot}"
        inputs: list[ir.Value] = []
        for j, key in enumerate(distinct):
            name = fresh_name(base if len(distinct) == 1 else f"{base}_{j}", taken)
            dtype = _alpha_dtype(members)
            v = ir.Value(name=name, shape=ir.Shape([1]), type=ir.TensorType(dtype))
            graph.inputs.append(v)
            inputs.append(v)
            feeds[name] = np.array([key], dtype=dtype.numpy())
        if len(distinct) > 1:
            notes.append(f"LoRA slot {slot}: the alpha constants differ ({[float(d) for d in distinct]}); one input per value")
        for branch, value in members:
            key = np.float64(1.0) if value is None else value.reshape(-1)[0]
            new = inputs[next(j for j, d in enumerate(distinct) if np.array_equal(key, d))]
            if branch.mul is None:
                _insert_multiplier(graph, branch, new, taken)
                continue
            old = branch.alpha
            idx = 0 if branch.mul.inputs[0] is old else 1
            branch.mul.replace_input_with(idx, new)
            if old.name:
                mapping.setdefault(old.name, [])
                if new.name not in mapping[old.name]:
                    mapping[old.name].append(new.name)
    return mapping, feeds, notes


def _alpha_dtype(members) -> ir.DataType:
    for branch, _ in members:
        if branch.alpha is not None and branch.alpha.dtype is not None:
            return branch.alpha.dtype
        out = branch.b_node.outputs[0]
        if out.dtype is not None:
            return out.dtype
    return ir.DataType.FLOAT


def _insert_multiplier(graph: ir.Graph, branch, alpha: ir.Value, taken: set[str]) -> None:
    """B's output -> Mul(B's output, alpha) -> the branch's Add."""
    out = branch.b_node.outputs[0]
    scaled = ir.Value(name=fresh_name(f"{out.name or 'lora_B'}.alpha", taken), shape=out.shape, type=out.type)
    for use in list(out.uses()):
        if use.node is branch.add:
            branch.add.replace_input_with(use.idx, scaled)
    mul = ir.node("Mul", [out, alpha], outputs=[scaled], name=fresh_name(f"{branch.b_node.name or 'lora_B'}.alpha_mul", taken))
    graph.insert_after(branch.b_node, mul)


def adapt(model: ir.Model, *, lora_alpha_from_input: bool = False) -> PrequantResult:
    """The pre-quantization adaptation of ``model``, in place (see the module docstring)."""
    from mha2sha.passes.cleanup import remove_dead

    result = PrequantResult(model)
    model.graph.sort()
    if lora_alpha_from_input:
        result.mapping, result.alpha_inputs, result.notes = lift_lora_alpha(model)
    before = model_names(model)
    result.removed_nodes = remove_dead(model)
    model.graph.sort()
    after = model_names(model)
    for name in sorted(before - after):
        result.mapping.setdefault(name, [])
    for name, new in list(result.mapping.items()):
        if name in after and name not in new:  # the original still exists beside the new names
            new.insert(0, name)
    result.mapping = {k: v for k, v in result.mapping.items() if v != [k]}
    return result


@dataclass
class PrequantOutput:
    model_path: Path
    mapping_path: Path
    result: PrequantResult


def run_prequant(model_path: str | os.PathLike, output_dir: str | os.PathLike, *, lora_alpha_from_input: bool = False, name: str | None = None, allow_hard_links: bool = False) -> PrequantOutput:
    """Load, adapt and write ``<name>.onnx`` and ``prequant_encodings_map.json`` into
    ``output_dir`` (what ``--skip-mha2sha`` does). Nothing is written when the input is bad;
    files appear only when complete."""
    from mha2sha.graph.io import (
        EXTERNAL_DATA_THRESHOLD,
        StagedOutput,
        load_model,
        prepare_output_dir,
        safe_output_name,
        save_model,
    )

    model_path = Path(model_path)
    loaded = load_model(model_path, allow_hard_links=allow_hard_links)
    result = adapt(loaded.model, lora_alpha_from_input=lora_alpha_from_input)
    stem = model_path.name[:-5] if model_path.name.endswith(".onnx") else model_path.stem
    name = safe_output_name(name or f"{stem}_prequant")
    inputs = [model_path] + sorted({Path(v.const_value.path) for v in loaded.model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)})
    out_dir = prepare_output_dir(output_dir, inputs)
    staged = StagedOutput(out_dir, inputs)
    try:
        model_file, _ = save_model(loaded.model, staged, name, external=loaded.external or loaded.weight_bytes > EXTERNAL_DATA_THRESHOLD)
        write_mapping(staged.path(PREQUANT_MAP_FILE), result.mapping)
        placed = staged.commit(last=model_file)
    except BaseException:
        staged.discard()
        raise
    return PrequantOutput(placed[model_file], placed[PREQUANT_MAP_FILE], result)


def write_mapping(path: str | os.PathLike, mapping: Mapping) -> None:
    with open(path, "w") as fh:
        json.dump(mapping, fh, indent=1, sort_keys=True)


# -- encodings -------------------------------------------------------------------------------


def rename_encodings(enc_set, mapping: Mapping[str, Sequence[str]], model: ir.Model) -> dict[str, list]:
    """Carry encodings keyed by original names onto the adapted model's names (in place):
    each mapped entry is copied to its new names (an alpha lifted to a graph input becomes an
    activation entry) and dropped when the original name is gone. Returns what happened."""
    names = model_names(model)
    inputs = {v.name for v in model.graph.inputs}
    done: dict[str, list] = {"renamed": [], "dropped": []}
    for original, new_names in mapping.items():
        if original not in enc_set.tensors:
            continue
        for new in new_names:
            if new == original:
                continue
            enc = enc_set.copy(original, new)
            if new in inputs and enc.section == "param":
                enc.section = "activation"
            done["renamed"].append((original, new))
        if original not in names:
            enc_set.remove(original)
            if not new_names:
                done["dropped"].append(original)
    return done


# -- all stages ------------------------------------------------------------------------------


def flatten_mapping(mapping: Mapping) -> dict[str, list[str]]:
    """``{name: [names]}`` from a flat mapping or the ``{"activation_encodings": {...},
    "param_encodings": {...}}`` form of mha_to_sha_encodings_names.json."""
    if set(mapping) & {"activation_encodings", "param_encodings"} and all(isinstance(v, Mapping) for v in mapping.values()):
        out: dict[str, list[str]] = {}
        for section in mapping.values():
            for k, v in section.items():
                out.setdefault(k, [])
                out[k].extend(x for x in v if x not in out[k])
        return out
    return {k: list(v) for k, v in mapping.items()}


def conv_record_mapping(record) -> dict[str, list[str]]:
    """The names linear->conv gave (a ``ConvRecord``): weights and biases (usually the same
    name, relaid out), and the layout tensors standing for each projection output."""
    out: dict[str, list[str]] = {}
    if record is None:
        return out
    for weight, (new, _old_axis, _new_axis) in record.weights.items():
        out.setdefault(weight, []).append(new)
    for bias, new in record.biases.items():
        out.setdefault(bias, []).append(new)
    for activation, new in record.activations.items():
        out.setdefault(activation, [activation]).extend(n for n in new if n != activation)
    return out


def _load(stage) -> dict[str, list[str]]:
    if stage is None:
        return {}
    if isinstance(stage, (str, os.PathLike)):
        with open(stage) as fh:
            stage = json.load(fh)
    elif hasattr(stage, "weights") and hasattr(stage, "activations"):
        return conv_record_mapping(stage)
    return flatten_mapping(stage)


def merge_mappings(stages: Sequence, *, final_names: Iterable[str] | None = None, originals: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Chain the stages' mappings (in pipeline order; each a dict, a JSON file, or a
    ConvRecord) into original name -> final names.

    Through each stage a name goes to the names that stage maps it to, and also stays itself
    (a stage's mapping does not say whether the original survives). With ``final_names``
    (the final model's tensor names) only names that exist at the end are kept, so survival
    is decided by the final model; without it a name stays itself only where a stage has
    no entry for it. Entries: every name any stage maps, plus ``originals`` (e.g. the names
    an encodings file holds), in sorted order."""
    maps = [_load(s) for s in stages]
    final = set(final_names) if final_names is not None else None
    keys: set[str] = set(originals or [])
    for m in maps:
        keys.update(m)
    # Names created by an earlier stage are reached through it, not entries of their own,
    # unless they are originals too.
    created: set[str] = set()
    for m in maps:
        for k, v in m.items():
            created.update(x for x in v if x != k)
    keys = {k for k in keys if k not in created or k in set(originals or [])}
    out: dict[str, list[str]] = {}
    for key in sorted(keys):
        current = [key]
        for m in maps:
            nxt: list[str] = []
            for name in current:
                targets = m.get(name)
                if targets is None:
                    cand = [name]
                elif final is not None:
                    cand = [name, *targets]
                else:
                    cand = list(targets)
                nxt.extend(c for c in cand if c not in nxt)
            current = nxt
        if final is not None:
            current = [c for c in current if c in final]
        out[key] = current
    return out


def write_all_stages_mapping(path: str | os.PathLike, stages: Sequence, *, final_model: ir.Model | None = None, originals: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Merge the stages (see merge_mappings) and write ``all_stages_encodings_mapping.json``
    to ``path`` (a file path; write it through a StagedOutput for atomicity)."""
    merged = merge_mappings(stages, final_names=model_names(final_model) if final_model is not None else None, originals=originals)
    write_mapping(path, merged)
    return merged
