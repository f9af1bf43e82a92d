"""Bundled examples: the written files load, compute their closed form, carry the traits
their description promises, and their encodings name only tensors of the model.

Oracle: onnxruntime on the written file against the closed-form reference of the same
config and seed (refimpl.functional, float64).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fuzz import build
from fuzz.examples import EXAMPLES, write_example

REQUIRED = ("llama2-tiny", "llama3-tiny", "qwen3-tiny", "phi3-tiny", "gpt2-tiny", "sd21-attn")

# What each description promises, checked on the written graph.
TRAITS = {
    "llama2-tiny": lambda m, ops: "position_ids" in _inputs(m) and "past_key_0" in _inputs(m),
    "llama3-tiny": lambda m, ops: "Expand" in ops and _dims(m, "past_key_0")[1] == 2,
    "qwen3-tiny": lambda m, ops: ops.count("ReduceMean") >= 4 * 2,  # 2 norms + q/k norms per layer
    "phi3-tiny": lambda m, ops: "Slice" in ops and "cos" in _inputs(m),
    "gpt2-tiny": lambda m, ops: "Gemm" in ops and "Split" in ops and "position_ids" not in _inputs(m),
    "sd21-attn": lambda m, ops: "Conv" in ops and "MatMul" in ops and len(_dims(m, "hidden_states")) == 4
    and "encoder_hidden_states" in _inputs(m),
    "opset23-tiny": lambda m, ops: {"Attention", "RotaryEmbedding"} <= set(ops),
    "llama2-lora-tiny": lambda m, ops: ops.count("Conv") >= 2 * 3 * 5 and "lora_alpha" in _inputs(m),  # q,k,v: base + 2x(A, B)
    "sd21-lora": lambda m, ops: ops.count("Conv") >= 3 * 3 and "lora_alpha" in _inputs(m),
    "bert-tiny": lambda m, ops: "LayerNormalization" in ops and "attention_mask" in _inputs(m) and "Softmax" in ops,
    "t5-tiny": lambda m, ops: "Gather" in ops and not {"Div", "Sqrt"} & set(ops[ops.index("Softmax") - 3: ops.index("Softmax")]),
    "bloom-tiny": lambda m, ops: "LayerNormalization" in ops and "Add" in ops,
    "mistral-tiny": lambda m, ops: "position_ids" in _inputs(m),
}


def _inputs(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.input}


def _dims(model: onnx.ModelProto, name: str) -> list[int]:
    info = next(i for i in model.graph.input if i.name == name)
    return [d.dim_value for d in info.type.tensor_type.shape.dim]


def test_the_required_examples_exist():
    assert set(REQUIRED) <= set(EXAMPLES)
    for ex in EXAMPLES.values():
        assert ex.description and ex.config.validate()


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_written_example_computes_its_closed_form(tmp_path, name):
    paths = write_example(name, tmp_path)
    assert set(paths) == {"model", "encodings"}
    assert paths["model"].name == f"{name}.onnx" and paths["encodings"].name == f"{name}.encodings"
    model = onnx.load(paths["model"])
    onnx.checker.check_model(model, full_check=True)
    built = build(EXAMPLES[name].config, seed=0)
    feeds = built.make_feeds(4)
    session = ort.InferenceSession(str(paths["model"]), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for out, expected in built.reference(feeds).items():
        err = float(np.abs(got[out] - expected).max()) / max(1.0, float(np.abs(expected).max()))
        assert err < 3e-5, f"{name} {out}: relative error {err:.2e}"
    ops = [n.op_type for n in model.graph.node]
    if name in TRAITS:
        assert TRAITS[name](model, ops), f"{name}: {EXAMPLES[name].description}"

    doc = json.loads(paths["encodings"].read_text())
    assert doc["version"] == "1.0.0"
    tensors = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
    tensors |= {o for n in model.graph.node for o in n.output}
    named = [e["name"] for section in ("activation_encodings", "param_encodings") for e in doc[section]]
    assert named and set(named) <= tensors
    assert any(e["enc_type"] == "PER_CHANNEL" for e in doc["param_encodings"])


def test_examples_are_the_same_on_every_run(tmp_path):
    a = write_example("llama3-tiny", tmp_path / "a", version="2.0.0")
    b = write_example("llama3-tiny", tmp_path / "b", version="2.0.0")
    assert a["model"].read_bytes() == b["model"].read_bytes()
    assert a["encodings"].read_bytes() == b["encodings"].read_bytes()
    assert json.loads(a["encodings"].read_text())["version"] == "2.0.0"


def test_unknown_example_names_the_known_ones(tmp_path):
    with pytest.raises(KeyError, match="llama2-tiny"):
        write_example("llama9-huge", tmp_path)
