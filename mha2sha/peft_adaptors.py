"""PEFT LoRA adaptor files onto the ONNX model's LoRA branches.

PEFT saves an adaptor as ``adapter_model.safetensors`` (keys like
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``: torch Linear weights,
lora_A ``[r, in]``, lora_B ``[out, r]``) and ``adapter_config.json`` (``r``, ``lora_alpha``,
``target_modules``, ``use_rslora``, ``rank_pattern``, ``alpha_pattern``). PEFT computes
``base(x) + lora_B(lora_A(x)) * scaling`` with ``scaling = lora_alpha / r`` (``/ sqrt(r)``
with rsLoRA).

The graph's LoRA branches are found by structure (mha2sha.lora_adaptors.find_lora_branches:
which op is A, which is B, their weights, layouts and the scaling Mul). Which PEFT module a
branch is comes from the module path the exporter kept: dynamo's ``pkg.torch.onnx.name_scopes``
node metadata, or TorchScript's node names (``/model/layers.0/self_attn/q_proj/...``). The
branch's module is the common part of the paths of its A node and its base projection (PEFT's
``lora_A`` and ``base_layer`` are children of the LoRA layer); it is matched to the adaptor
module whose path shares the longest tail with it (layer index and module name at least).

Each PEFT tensor becomes the initializer of that branch in the graph's layout (MatMul
``[in, out]``, Gemm as its transB says, Conv ``[out, in, 1, 1]``). The adaptor's scaling is
folded into lora_B relative to the scaling the graph multiplies by (a constant shared by all
branches in dynamo exports, so it cannot be swapped itself); where the scaling is a graph input
(``--lora-alpha-from-input``) it is reported as the value to feed instead.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from mha2sha.errors import InputError
from mha2sha.graph.ir_utils import attr, const_tensor, is_const

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class PeftConfig:
    r: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    use_rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)

    def _pattern(self, patterns: dict, module: str, default):
        for key, value in patterns.items():
            if module == key or module.endswith("." + key) or re.fullmatch(key, module):
                return value
        return default

    def rank(self, module: str) -> int:
        return int(self._pattern(self.rank_pattern, module, self.r))

    def scaling(self, module: str) -> float:
        alpha = float(self._pattern(self.alpha_pattern, module, self.lora_alpha))
        r = self.rank(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def read_peft_config(path: Path) -> PeftConfig:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(path, f"cannot read the PEFT adaptor config: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(path, f"the PEFT adaptor config is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(path, "the PEFT adaptor config is not a JSON object")
    if doc.get("peft_type", "LORA") != "LORA":
        raise InputError(path, f"peft_type {doc.get('peft_type')!r}: only LoRA adaptors can be converted")
    if doc.get("use_dora"):
        raise InputError(path, "DoRA adaptors (use_dora) have a magnitude vector the graph's LoRA branches do not compute")
    try:
        r, alpha = int(doc["r"]), float(doc["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, "the PEFT adaptor config needs r and lora_alpha (numbers)") from None
    targets = doc.get("target_modules") or ()
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    return PeftConfig(r, alpha, targets, bool(doc.get("use_rslora")), dict(doc.get("rank_pattern") or {}),
                      dict(doc.get("alpha_pattern") or {}))


def is_peft_adaptor(tensors: dict, initializer_names: set[str]) -> bool:
    """Keys in PEFT's form (``<module>.lora_A.weight``) that are not the model's own names."""
    return bool(tensors) and all(_KEY.match(k) for k in tensors) and not set(tensors) <= initializer_names


def _scope(node: ir.Node) -> list[str] | None:
    """The module path the exporter recorded for ``node``, as components."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            names = None
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            # Nested scopes, outermost first ('', 'model', 'model.layers.0', ...), then the
            # node's own name: the module path is the last scope that extends the one before.
            chain: list[str] = []
            for scope in names:
                if scope and (not chain or scope.startswith(chain[-1] + ".")):
                    chain.append(scope)
            if chain:
                return chain[-1].split(".")
    if node.name and node.name.startswith("/") and node.name.count("/") >= 2:
        return [p for part in node.name.strip("/").split("/")[:-1] for p in part.split(".")]
    return None


def _common_prefix(a: list[str], b: list[str]) -> list[str]:
    out = []
    for x, y in zip(a, b):
        if x != y:
            break
        out.append(x)
    return out


def _tail(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def branch_modules(lora_branches: list) -> list[tuple[object, list[str] | None]]:
    """Every LoRA branch (``mha2sha.lora_adaptors.find_lora_branches`` of the graph; passed in
    so that this module does not import lora_adaptors back) with the module path the export
    kept for it (None where it kept none)."""
    out = []
    for b in lora_branches:
        a_path, base_path = _scope(b.a_node), _scope(b.base)
        module = _common_prefix(a_path, base_path) if a_path and base_path else None
        out.append((b, module or None))
    return out


def _layout(node: ir.Node, weight: ir.Value, torch_weight: np.ndarray) -> np.ndarray:
    """A torch Linear weight ``[out, in]`` in the layout ``node`` reads ``weight`` in."""
    shape = tuple(int(d) for d in const_tensor(weight).shape)
    if node.op_type == "MatMul":
        out = torch_weight.T
    elif node.op_type == "Gemm":
        out = torch_weight if attr(node, "transB", 0) else torch_weight.T
    else:  # 1x1 Conv
        out = torch_weight.reshape(torch_weight.shape + (1, 1))
    if out.shape != shape:
        raise ValueError(f"{list(torch_weight.shape)} as {node.op_type} weight is {list(out.shape)}, the graph's {list(shape)}")
    return np.ascontiguousarray(out)


def _graph_scaling(branch) -> float | None:
    """The scaling the graph multiplies B's output by (1 without a Mul); None when it is
    not a constant (a graph input: --lora-alpha-from-input)."""
    if branch.alpha is None:
        return 1.0
    if not is_const(branch.alpha):
        return None
    return float(np.asarray(const_tensor(branch.alpha).numpy()).reshape(-1)[0])


@dataclass
class PeftMapping:
    tensors: dict[str, np.ndarray]  # graph initializer name -> value in the graph's layout
    modules: dict[str, str]  # adaptor module -> graph branch (its lora_A weight name)
    alpha_inputs: dict[str, float] = field(default_factory=dict)  # graph input -> value to feed
    notes: list[str] = field(default_factory=list)


def map_peft_adaptor(name: str, tensors: dict[str, np.ndarray], config: PeftConfig, lora_branches: list) -> PeftMapping:
    """The adaptor's tensors under the graph's initializer names (see the module docstring);
    ``lora_branches``: ``mha2sha.lora_adaptors.find_lora_branches`` of the graph."""
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        modules.setdefault(m["module"], {})[m["which"]] = np.asarray(value)
    for module, pair in modules.items():
        if set(pair) != {"A", "B"}:
            raise InputError(None, f"adaptor {name!r}: module {module!r} has lora_{''.join(sorted(pair))} only")
    branches = branch_modules(lora_branches)
    if not branches:
        raise InputError(None, f"adaptor {name!r}: the model has no LoRA branch (export the model with the adaptor applied)")
    unnamed = [b for b, path in branches if path is None]
    if unnamed:
        raise InputError(None, f"adaptor {name!r}: the export kept no module path for the LoRA branch of {unnamed[0].base.name or unnamed[0].base.op_type} "
                               "(TorchScript node names or dynamo name scopes); name the adaptor's tensors as the model's initializers instead")
    paths = {module: module.split(".") for module in modules}
    out = PeftMapping({}, {})
    claimed: dict[str, str] = {}
    for branch, path in branches:
        scored = sorted(((_tail(path, p), m) for m, p in paths.items()), reverse=True)
        best, module = scored[0]
        tied = len(scored) > 1 and scored[1][0] == best
        # At least the module name and the layer index (a numeric component) must agree.
        if best < 2 or not any(c.isdigit() for c in path[len(path) - best:]) or tied:
            raise InputError(None, f"adaptor {name!r}: no adaptor module matches the LoRA branch of module {'.'.join(path)!r}"
                                   + (f" (as close: {scored[0][1]!r}, {scored[1][1]!r})" if tied else ""))
        if module in claimed:
            raise InputError(None, f"adaptor {name!r}: module {module!r} matches two LoRA branches ({claimed[module]!r}, {'.'.join(path)!r})")
        claimed[module] = ".".join(path)
        a, b = modules[module]["A"], modules[module]["B"]
        if a.shape[0] != branch.rank:
            raise InputError(None, f"adaptor {name!r}: module {module!r} has rank {a.shape[0]}, the graph's branch {branch.rank} "
                                   "(an adaptor swapped in at run time has the rank of the one exported)")
        for weight in (branch.a_weight, branch.b_weight):
            if not weight.is_initializer():
                raise InputError(None, f"adaptor {name!r}: the {module!r} branch's weight is not an initializer (a Constant node), so it cannot be swapped")
        scaling = config.scaling(module)
        graph_scaling = _graph_scaling(branch)
        factor = 1.0
        if graph_scaling is None:
            out.alpha_inputs.setdefault(branch.alpha.name, scaling)
            if out.alpha_inputs[branch.alpha.name] != scaling:
                raise InputError(None, f"adaptor {name!r}: alpha input {branch.alpha.name!r} is shared by modules of different scalings")
        elif graph_scaling == 0:
            raise InputError(None, f"adaptor {name!r}: the {module!r} branch multiplies by 0; no adaptor can be folded into it")
        else:
            factor = scaling / graph_scaling
        try:
            a_graph = _layout(branch.a_node, branch.a_weight, a)
            b_graph = _layout(branch.b_node, branch.b_weight, b * factor if factor != 1.0 else b)
        except ValueError as exc:
            raise InputError(None, f"adaptor {name!r}: module {module!r}: {exc}") from None
        dtype = np.dtype(const_tensor(branch.a_weight).dtype.numpy())
        out.tensors[branch.a_weight.name] = a_graph.astype(dtype) if a_graph.dtype.kind == "f" and dtype.kind == "f" else a_graph
        out.tensors[branch.b_weight.name] = b_graph.astype(dtype) if b_graph.dtype.kind == "f" and dtype.kind == "f" else b_graph
        out.modules[module] = branch.a_weight.name
        if factor != 1.0:
            out.notes.append(f"{module}: scaling {scaling:g} folded into lora_B (the graph multiplies by {graph_scaling:g})")
    missing = sorted(set(modules) - set(claimed))
    if missing:
        raise InputError(None, f"adaptor {name!r}: {len(missing)} adaptor modules have no LoRA branch in the model, e.g. {missing[0]!r}")
    return out


def peft_files(path: Path) -> tuple[Path, Path | None]:
    """(weights, config) of a PEFT adaptor given as its folder or its safetensors file."""
    path = Path(path)
    if path.is_dir():
        return path / WEIGHTS_FILE, path / CONFIG_FILE
    config = path.parent / CONFIG_FILE
    return path, config if config.is_file() else None
