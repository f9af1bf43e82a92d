"""PEFT adaptors on real exports: a tiny HF Llama with a LoRA adaptor made by the ``peft``
package, exported with the adaptor applied (TorchScript and dynamo), converted together with
PEFT adaptor folders (``adapter_model.safetensors`` + ``adapter_config.json``, PEFT key names,
another rank-equal adaptor with a different lora_alpha). Oracle: the torch model's own output
with each adaptor, against onnxruntime on the SHA model with that adaptor's converted tensors
swapped in."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import numpy_helper

from tests.exporters.hf_models import ExportCase, build_torch_model

pytestmark = pytest.mark.exporters
peft = pytest.importorskip("peft", reason="the peft package is not installed (pip install peft)")


def _peft_model(case: ExportCase, seed: int, alpha: float):
    import torch

    model = build_torch_model(case)  # same base weights every time (seed 0)
    config = peft.LoraConfig(r=4, lora_alpha=alpha, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                             init_lora_weights=False, lora_dropout=0.0)
    torch.manual_seed(seed)
    return peft.get_peft_model(model, config).eval()


def _logits(model, ids, mask):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), use_cache=False).logits.numpy()


def _export(model, path, ids, mask, case):
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(model), (torch.from_numpy(ids), torch.from_numpy(mask)), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=case.opset,
                          dynamo=case.dynamo)


def _with_tensors(model_path, tensors: dict, out_path):
    """The SHA model with some initializers replaced (what a runtime adaptor swap does)."""
    model = onnx.load(model_path)
    replaced = set()
    for init in model.graph.initializer:
        if init.name in tensors:
            init.CopyFrom(numpy_helper.from_array(tensors[init.name], init.name))
            replaced.add(init.name)
    assert replaced == set(tensors), set(tensors) - replaced
    onnx.save(model, out_path)
    return out_path


@pytest.mark.parametrize("case", [ExportCase("llama", False, 17, "eager", {"num_key_value_heads": 2}),
                                  ExportCase("llama", True, 18, "eager", {"num_key_value_heads": 2})], ids=lambda c: c.id)
def test_peft_adaptors_round_trip(case, tmp_path):
    from mha2sha.api import ConvertOptions, convert
    from mha2sha.lora_adaptors import read_safetensors

    rng = np.random.default_rng(0)
    ids = rng.integers(1, 128, (1, 7)).astype(np.int64)
    mask = np.ones_like(ids)
    exported = _peft_model(case, seed=1, alpha=8)
    other = _peft_model(case, seed=2, alpha=16)  # another adaptor of the same rank, its own scaling
    exported.save_pretrained(tmp_path / "first")
    other.save_pretrained(tmp_path / "second")
    want = {"first": _logits(exported, ids, mask), "second": _logits(other, ids, mask)}
    assert np.abs(want["first"] - want["second"]).max() > 1e-2  # the adaptors differ
    _export(exported, tmp_path / "model.onnx", ids, mask, case)
    (tmp_path / "adaptors.yaml").write_text(yaml.safe_dump({"use_case": [
        {"name": "first", "lora_weights": "first"},
        {"name": "second", "lora_weights": "second/adapter_model.safetensors"},
    ]}))
    result = convert(tmp_path / "model.onnx", tmp_path / "out", ConvertOptions(lora_adaptors=str(tmp_path / "adaptors.yaml")))
    assert result.ok, result.report.get("blocks")
    summary = {a["name"]: a for a in result.report["lora_adaptors"]["adaptors"]}
    assert summary["first"]["peft"]["modules"] == 4 * case.layers
    assert summary["second"]["peft"]["notes"], "lora_alpha 16 over the graph's 8: the scaling is folded into lora_B"
    feeds = {"input_ids": ids, "attention_mask": mask}
    for name in ("first", "second"):
        tensors, _ = read_safetensors(result.model_path.parent / f"adaptor_{name}.safetensors")
        assert tensors and all(np.isfinite(v).all() for v in tensors.values())
        swapped = _with_tensors(result.model_path, tensors, tmp_path / f"sha_{name}.onnx")
        got = ort.InferenceSession(str(swapped), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
        np.testing.assert_allclose(got, want[name], rtol=0, atol=2e-4 * max(1.0, float(np.abs(want[name]).max())), err_msg=name)
    # The SHA per-head lora_B slices are what the adaptor's own matrices say, not the exported ones.
    per_head = [n for n in tensors if ".h" in n or ".kv" in n]
    assert per_head, sorted(tensors)[:8]


def test_peft_keys_without_config_are_refused(tmp_path):
    """PEFT key names need adapter_config.json (r, lora_alpha) beside them: refused with one
    clear line, nothing written."""
    from mha2sha.api import ConvertOptions, convert
    from mha2sha.errors import InputError

    case = ExportCase("llama", False, 17, "eager", {"num_key_value_heads": 2})
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 128, (1, 7)).astype(np.int64)
    model = _peft_model(case, seed=1, alpha=8)
    model.save_pretrained(tmp_path / "a")
    _export(model, tmp_path / "model.onnx", ids, np.ones_like(ids), case)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "w.safetensors").write_bytes((tmp_path / "a" / "adapter_model.safetensors").read_bytes())
    (tmp_path / "l.yaml").write_text(yaml.safe_dump([{"name": "x", "lora_weights": "lone/w.safetensors"}]))
    with pytest.raises(InputError, match="adapter_config.json"):
        convert(tmp_path / "model.onnx", tmp_path / "out", ConvertOptions(lora_adaptors=str(tmp_path / "l.yaml")))
    assert sorted(p.name for p in lone.iterdir()) == ["w.safetensors"]
