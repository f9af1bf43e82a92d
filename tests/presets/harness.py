"""The preset regression harness: build or export a preset's model, convert it, verify it, and
describe the converted graph's structure for comparison with the pinned one.

A preset file (``tests/presets/<preset>.yaml``) has a hand-written part (the model family, the
converter flags, known divergences) and, after the PIN_MARKER line, the pinned structure written
by ``python -m tests.presets.update``. See docs/presets.md.

Each preset has up to two cases:

``fuzz``    a fuzz.AttentionConfig built with known parameters; oracle: the closed form
            (``BuiltModel.reference``, float64); encodings from ``fuzz.make_encodings``.
``export``  a tiny random-initialised model exported with torch.onnx (tests/presets/exporters.py);
            oracle: onnxruntime on the original export; encodings from ``fuzz.make_encodings``
            calibrated on the export (same quantizer placement rules).

A case passes when (1) every attention block converts, (2) onnxruntime on the converted model
equals the oracle, (3) the conversion through the reference tool's entry point
(``mha2sha-onnx-converter --base-llm <preset>`` with the encodings) writes a verification
report whose status is ``pass``, its model has the same structure as the in-memory conversion,
and (4) the structure equals the pinned one.

Structure (what is pinned, see ``structure()``): converted and skipped blocks; per group of
identical blocks the heads, kv heads, head dim, the features the analysis reported (rope, mask,
past_kv, lora, qk_norm, projection) and the nodes per query head / per kv head / per block by
op type (the converter names every node it creates ``attn<k>.h<i>.`` (query head or, with
--build-ar, ``g<i>``), ``attn<k>.kv<g>.`` (kv head) or ``attn<k>.<other>`` (shared by the
block)); the cache inputs/outputs split per kv head; the converted graph's inputs and outputs
with shapes; the op histogram of the whole converted graph; and which of the preset's flag
expectations the model meets.
"""

from __future__ import annotations

import difflib
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import yaml

PRESET_DIR = Path(__file__).resolve().parent
PIN_MARKER = "# ---- pinned: written by `python -m tests.presets.update`; review the diff, do not edit by hand ----"
CASES = ("fuzz", "export")
CORES = ("Softmax", "Attention")
FEATURES = ("rope", "mask", "past_kv", "lora", "qk_norm", "projection")
FEEDS_SEED = 11


_COMMON_KEYS = {"seed", "encodings", "converter", "known_failure"}
CASE_KEYS = {
    "fuzz": _COMMON_KEYS | {"config"},
    "export": _COMMON_KEYS | {"library", "arch", "config", "exporter", "opset", "attn_implementation", "mode", "lora",
                              "layers", "heads", "latent_size", "text_len", "keep_external_data"},
}


class CaseFailure(AssertionError):
    """A behavioural check of a case failed (not a structural difference)."""


# -- preset files ------------------------------------------------------------------------------


@dataclass
class Preset:
    name: str
    path: Path
    spec: dict  # the hand-written part
    pinned: dict  # case -> structure
    head_text: str  # the hand-written text, kept byte for byte by the update command

    def case_spec(self, case: str) -> dict | None:
        return self.spec.get(case)

    @property
    def cases(self) -> list[str]:
        return [c for c in CASES if self.spec.get(c)]


def preset_files() -> list[Path]:
    return sorted(PRESET_DIR.glob("*.yaml"))


def load_preset(path: Path) -> Preset:
    text = path.read_text()
    head, _, pinned_text = text.partition(PIN_MARKER + "\n")
    spec = yaml.safe_load(head) or {}
    pinned = (yaml.safe_load(pinned_text) or {}).get("pinned", {}) if pinned_text else {}
    name = spec.get("preset", path.stem)
    if name != path.stem:
        raise ValueError(f"{path.name}: preset {name!r} must live in {name}.yaml")
    for key in spec:
        if key not in ("preset", "description", "converter", *CASES):
            raise ValueError(f"{path.name}: unknown key {key!r}")
    for case in CASES:
        unknown = set(spec.get(case) or {}) - CASE_KEYS[case]
        if unknown:
            raise ValueError(f"{path.name}: unknown keys in {case}: {sorted(unknown)}")
    return Preset(name, path, spec, pinned, head.rstrip("\n") + "\n")


def load_presets() -> list[Preset]:
    return [load_preset(p) for p in preset_files()]


class _Dumper(yaml.SafeDumper):
    """Per-head op histograms and lists of scalars on one line, everything else one entry per
    line: a structural change shows as a short line diff."""


class _Flow(dict):
    pass


def _represent_dict(dumper, data):
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=isinstance(data, _Flow) or not data)


def _represent_list(dumper, data):
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(_Flow, _represent_dict)
_Dumper.add_representer(list, _represent_list)


def _styled(data, key: str = ""):
    if isinstance(data, dict):
        if key.startswith("nodes_per_"):
            if data and all(isinstance(v, dict) for v in data.values()):
                return {k: _Flow(v) for k, v in data.items()}  # one histogram per head
            return _Flow(data)
        return {k: _styled(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [_styled(v, key) for v in data]
    return data


def dump_yaml(data) -> str:
    return yaml.dump(_styled(data), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def render(preset: Preset, pinned: dict) -> str:
    """The file text: the hand-written part unchanged, the marker, the pinned structure."""
    return preset.head_text + "\n" + PIN_MARKER + "\n" + dump_yaml({"pinned": pinned})


# -- converter flags ----------------------------------------------------------------------------


def converter_flags(preset: Preset, case: str) -> dict:
    """The preset's converter flags, with the case's overrides (``<case>.converter``)."""
    flags = dict(preset.spec.get("converter", {}))
    flags.update((preset.case_spec(case) or {}).get("converter", {}))
    flags.pop("why", None)
    return flags


def _reference_flags(flags: dict, model: Path, encodings: Path | None, out: Path):
    """ReferenceFlags as `mha2sha-onnx-converter` builds them from the same command line."""
    from mha2sha.compat import ReferenceFlags

    values = {k: v for k, v in flags.items() if v is not None}
    ref = ReferenceFlags(exported_model_path=str(model), exported_model_encoding_path=str(encodings) if encodings else None,
                         sha_export_path=str(out), **values)
    ref.explicit = {k for k, v in values.items() if v is not None and v is not False} | ({"strict"} if values.get("strict") is False else set())
    return ref


# -- materialising a case ------------------------------------------------------------------------


@dataclass
class Materialized:
    model_path: Path
    encodings_path: Path | None
    feeds: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]  # the oracle's outputs, by graph output name
    tolerance: float  # max |got - expected| / max(1, max |expected|)
    oracle: str
    versions: dict[str, str] = field(default_factory=dict)


def _write_encodings(source, spec: dict, path: Path) -> Path | None:
    from fuzz import make_encodings, write_encodings

    options = spec.get("encodings", {})
    if options is None or options is False:
        return None
    scheme = dict(options.get("scheme", {}))
    enc = make_encodings(source, version=options.get("version", "1.0.0"), seed=options.get("seed", 0), **scheme)
    return write_encodings(enc, path)


def materialize(preset: Preset, case: str, workdir: Path) -> Materialized:
    spec = preset.case_spec(case)
    if case == "fuzz":
        from fuzz import AttentionConfig, build

        cfg = AttentionConfig(**spec["config"]).validate()
        built = build(cfg, seed=spec.get("seed", 0))
        path = workdir / f"{preset.name}.onnx"
        onnx.save_model(built.model, path)
        encodings = _write_encodings(built, spec, workdir / f"{preset.name}.encodings")
        feeds = built.make_feeds(FEEDS_SEED)
        tol = 3e-2 if cfg.dtype == "float16" else 3e-5
        return Materialized(path, encodings, feeds, built.reference(feeds), tol, "closed form (fuzz reference, float64)")
    if case == "export":
        from tests.presets.exporters import export

        path = workdir / f"{preset.name}.onnx"
        exported = export(spec, path)
        model = onnx.load(path)  # external data read in
        if not spec.get("keep_external_data"):
            # One self-contained file: the per-block verification cannot read a model whose
            # weights live in a .onnx.data file (test_presets.py::test_external_data_export).
            for data in path.parent.glob(path.name + "*.data"):
                data.unlink()
            onnx.save_model(model, path)
        names = {i.name for i in model.graph.input}
        feeds = {k: v for k, v in exported.feeds.items() if k in names}
        exported.feeds = feeds
        # fuzz.make_encodings reads .model, .make_feeds(seed) and .config (mask fill): the export
        # is calibrated exactly like a built model.
        source = SimpleNamespace(model=model, make_feeds=exported.make_feeds, config=None)
        encodings = _write_encodings(source, spec, workdir / f"{preset.name}.encodings")
        expected = _run_ort(path, feeds)
        return Materialized(path, encodings, feeds, expected, 1e-5, "onnxruntime on the original export", exported.versions)
    raise ValueError(f"unknown case {case!r}")


def _run_ort(model, feeds: dict) -> dict[str, np.ndarray]:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})))


# -- the conversion and its checks --------------------------------------------------------------


@dataclass
class CaseResult:
    structure: dict
    versions: dict[str, str]
    report_status: str
    max_error: float


def convert_in_memory(model_path: Path, flags: dict, encodings_path: Path | None = None):
    """split_model (and linear->conv when asked) as mha2sha.api.convert runs them, after the
    LoRA alpha lift when the flags ask for it. Returns (model, split, feeds for new inputs).
    With ``encodings_path`` the split sees the encodings as the CLI's does: where a layout op
    carries a quantizer of its own, the emitted per-head form keeps it (e.g. RoPE)."""
    from mha2sha.api import _requantized
    from mha2sha.encodings import read_encodings
    from mha2sha.pipeline import _all_names, split_model

    model = ir.serde.deserialize_model(onnx.load(model_path))  # external data read in: tiny models
    extra_feeds: dict = {}
    from mha2sha.compat import PRESETS

    preset_flags = PRESETS.get(flags.get("base_llm") or "", set())
    if flags.get("lora_alpha_from_input", "lora_alpha_from_input" in preset_flags):
        from mha2sha.prequant import adapt

        extra_feeds = dict(adapt(model, lora_alpha_from_input=True).alpha_inputs)
    requantized = _requantized(read_encodings(encodings_path)) if encodings_path is not None else None
    result = split_model(model, heads_per_block=flags.get("build_ar") or 1, per_head_cache_io=True, requantized=requantized)
    if flags.get("replace_linear_with_conv") and result.converted:
        from mha2sha.passes.cleanup import cleanup
        from mha2sha.passes.linear_to_conv import linear_to_conv

        linear_to_conv(model, _all_names(model.graph))
        cleanup(model)
    return ir.serde.serialize_model(model), result, extra_feeds


def run_case(preset: Preset, case: str, workdir: Path | None = None) -> CaseResult:
    """Run every check of one case and return the structure found. Raises CaseFailure."""
    from mha2sha.compat import run_reference_flags
    from tests.converter.conftest import merge_outputs, sha_feeds

    if workdir is None:
        with tempfile.TemporaryDirectory(prefix=f"preset-{preset.name}-") as tmp:
            return run_case(preset, case, Path(tmp))
    flags = converter_flags(preset, case)
    mat = materialize(preset, case, workdir)

    # (1) every block converts
    converted, split, alpha_feeds = convert_in_memory(mat.model_path, flags, mat.encodings_path)
    if not split.blocks:
        raise CaseFailure(f"{preset.name}/{case}: no attention block found")
    skipped = [f"{b.name} {b.anchor}: {b.reason}" + (f" (stopped at {b.stopped_at})" if b.stopped_at else "") for b in split.skipped]
    if skipped:
        raise CaseFailure(f"{preset.name}/{case}: blocks not converted:\n  " + "\n  ".join(skipped))
    onnx.checker.check_model(converted, full_check=True)
    cores = sum(1 for n in converted.graph.node if n.op_type in CORES)
    per_block = flags.get("build_ar") or 1
    if cores != sum(b.heads // per_block for b in split.converted):
        raise CaseFailure(f"{preset.name}/{case}: {cores} attention cores, expected one per head group")

    # (2) the converted model computes what the oracle says
    got = merge_outputs(_run_ort(converted, sha_feeds({**mat.feeds, **alpha_feeds}, split)), split)
    worst = 0.0
    for name, expected in mat.expected.items():
        err = float(np.abs(got[name].astype(np.float64) - expected).max()) / max(1.0, float(np.abs(expected).max()))
        worst = max(worst, err)
        if not err <= mat.tolerance:
            raise CaseFailure(f"{preset.name}/{case}: output {name} differs from the {mat.oracle} by {err:.2e} (> {mat.tolerance:.0e})")

    # (3) the reference tool's entry point: --base-llm, encodings, verification report
    out = workdir / "sha"
    result = run_reference_flags(_reference_flags(flags, mat.model_path, mat.encodings_path, out))
    report = result.report or {}
    if report.get("status") != "pass":
        raise CaseFailure(f"{preset.name}/{case}: verification report status {report.get('status')!r}:\n" + _report_summary(report))
    shipped = onnx.load(result.model_path, load_external_data=False)
    if _op_histogram(shipped) != _op_histogram(converted) or _io(shipped) != _io(converted):
        raise CaseFailure(f"{preset.name}/{case}: the CLI conversion differs from the in-memory one:\n"
                          + structure_diff(_io(converted) | {"ops": _op_histogram(converted)}, _io(shipped) | {"ops": _op_histogram(shipped)}))

    found = structure(converted, split, report.get("expectations", []))
    return CaseResult(found, mat.versions, report["status"], worst)


def _report_summary(report: dict) -> str:
    lines = []
    if report.get("failure"):
        lines.append(f"  failure: {report['failure']}")
    for b in report.get("blocks", []):
        if b.get("status") != "pass":
            lines.append(f"  block {b.get('name')}: {b.get('status')} {b.get('checks', '')}"[:400])
    if report.get("end_to_end", {}).get("status") not in (None, "pass"):
        lines.append(f"  end to end: {report['end_to_end']}"[:400])
    for e in report.get("expectations", []):
        if not e["found"]:
            lines.append(f"  expectation {e['flag']} ({e['expects']}) not met (strict={report.get('strict_expectations')})")
    if report.get("encodings_coverage", {}).get("status") == "fail":
        lines.append(f"  encodings coverage: {report['encodings_coverage']}"[:400])
    return "\n".join(lines) or "  (no details)"


# -- structure --------------------------------------------------------------------------------------

_UNIT = re.compile(r"^attn(\d+)\.(h|g|kv)(\d+)\.")
_BLOCK = re.compile(r"^attn(\d+)\.")


def _op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def _dims(value: onnx.ValueInfoProto) -> list:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _io(model: onnx.ModelProto) -> dict:
    def entry(v):
        return f"{onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name} {_dims(v)}"

    return {"inputs": {v.name: entry(v) for v in model.graph.input}, "outputs": {v.name: entry(v) for v in model.graph.output}}


def _per_unit(counts: dict[str, Counter]) -> dict:
    """One op histogram when every head (kv head) has the same, else one per head."""
    if not counts:
        return {}
    hists = {k: dict(sorted(c.items())) for k, c in sorted(counts.items(), key=lambda kv: (kv[0].rstrip('0123456789'), int(re.sub(r'^[a-z]+', '', kv[0]))))}
    values = list(hists.values())
    return values[0] if all(v == values[0] for v in values) else hists


def _node_counts(model: onnx.ModelProto) -> dict[int, dict[str, dict[str, Counter]]]:
    """block index -> {"heads": {h0: Counter}, "kv": {kv0: Counter}, "block": {"": Counter}}."""
    out: dict[int, dict[str, dict[str, Counter]]] = {}
    for node in model.graph.node:
        m = _UNIT.match(node.name)
        if m:
            block, unit, index = int(m.group(1)), m.group(2), m.group(3)
            kind = "kv" if unit == "kv" else "heads"
            out.setdefault(block, {}).setdefault(kind, {}).setdefault(unit + index, Counter())[node.op_type] += 1
            continue
        m = _BLOCK.match(node.name)
        if m:
            out.setdefault(int(m.group(1)), {}).setdefault("block", {}).setdefault("", Counter())[node.op_type] += 1
    return out


def structure(converted: onnx.ModelProto, split, expectations: list[dict]) -> dict:
    """What is pinned for one case (see the module docstring)."""
    counts = _node_counts(converted)
    groups: list[dict] = []
    for b in split.blocks:
        index = int(b.name[len("attn"):])
        c = counts.get(index, {})
        desc = {
            "heads": b.heads, "kv_heads": b.kv_heads, "head_dim": b.head_dim,
            **{k: b.features.get(k, "?") for k in FEATURES},
            "nodes_per_head": _per_unit(c.get("heads", {})),
            "nodes_per_kv_head": _per_unit(c.get("kv", {})),
            "nodes_per_block": dict(sorted(c.get("block", {}).get("", Counter()).items())),
        }
        for g in groups:
            if g["desc"] == desc:
                g["blocks"].append(b.name)
                break
        else:
            groups.append({"blocks": [b.name], "desc": desc})
    cache = {}
    for record in split.records:
        for name, s in record.io_splits.items():
            cache[name] = f"{s.kind} split on axis {s.axis} into {len(s.names)} per kv head"
    return {
        "blocks_converted": len(split.converted),
        "blocks_skipped": [f"{b.anchor}: {b.reason}" for b in split.skipped],
        "attention": [{"blocks": g["blocks"], **g["desc"]} for g in groups],
        "cache_io": dict(sorted(cache.items())),
        **_io(converted),
        "graph_ops": _op_histogram(converted),
        "expectations": {e["flag"]: bool(e["found"]) for e in expectations},
    }


def structure_diff(pinned, found) -> str:
    a = dump_yaml(pinned).splitlines()
    b = dump_yaml(found).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "pinned", "found", lineterm="", n=2))
