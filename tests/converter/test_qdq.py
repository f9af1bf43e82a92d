"""--emit-qdq: the SHA model as a QDQ ONNX model, checked against AIMET's arithmetic.

Oracles: refimpl.quant (AIMET's quantize-dequantize, closed form) for every weight and
bias, and refimpl's simulated-quantization run of the SHA model for the activations.
ONNX QuantizeLinear rounds ties to even where AIMET rounds them up; on quantized graphs
exact ties are common (two equal quantized scores give probabilities of exactly 1/2), and
a one-step flip moves later layers. So the activations are checked where no tie has
happened yet (upstream of the first Softmax: within one step) and the outputs by their
distance to the simulation, which must stay well below the quantization noise itself.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import refimpl
from fuzz.examples import write_example
from mha2sha.api import ConvertOptions, convert
from mha2sha.correspondence import block_correspondence
from mha2sha.encodings import numeric_encodings, read_encodings
from refimpl.quant import quantize_dequantize
from verify.run import consistent_graph_feeds


def _converted(tmp_path, name):
    files = write_example(name, tmp_path / "in")
    result = convert(files["model"], tmp_path / "out", ConvertOptions(encodings=files["encodings"], emit_qdq=True))
    assert result.ok
    qdq = result.model_path.with_name(result.model_path.stem + "_qdq.onnx")
    sha = onnx.load(str(result.model_path))
    quant = numeric_encodings(read_encodings(result.encodings_path), sha)
    return files, result, sha, quant, qdq, result.report["qdq"]


def _run_with_outputs(path, feeds, names):
    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for n in names:
        if n not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def test_weights_and_int32_biases_follow_aimet_arithmetic(tmp_path):
    _, _, sha, quant, qdq, summary = _converted(tmp_path, "gpt2-tiny")
    assert summary["weights"] > 0 and summary["biases_int32"] > 0 and summary["activations"] > 0
    q = onnx.load(str(qdq))
    stored = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    weights = {t.name: numpy_helper.to_array(t) for t in sha.graph.initializer}
    dq_of = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in stored}
    checked = 0
    for name, node in dq_of.items():
        if name not in weights or name not in quant or stored[node.input[0]].dtype == np.int32:
            continue
        got = _dequantize(node, stored)
        np.testing.assert_array_equal(got.astype(np.float32), quantize_dequantize(weights[name].astype(np.float32), quant[name]), err_msg=name)
        checked += 1
    assert checked == summary["weights"]
    biases = [n for n in dq_of.values() if stored[n.input[0]].dtype == np.int32]
    assert len(biases) == summary["biases_int32"]
    sha_nodes = {i: n for n in sha.graph.node for i in n.input}
    for node in biases:
        bias = node.output[0]
        user = sha_nodes[bias]
        weight = user.input[1] if user.op_type in ("Gemm", "Conv") else None
        assert weight in quant, (bias, user.op_type)
        scale = stored[node.input[1]].astype(np.float64)
        x_scale = scale / np.asarray(quant[weight].scale, dtype=np.float64)
        assert np.allclose(x_scale, x_scale.reshape(-1)[0], rtol=1e-6), "one input scale x per-channel weight scales"
        assert (stored[node.input[2]] == 0).all()
        assert np.abs(_dequantize(node, stored) - weights[bias]).max() <= scale.max() / 2 * (1 + 1e-6)


def _dequantize(node, stored):
    q, scale, zp = (stored[i].astype(np.float64) for i in node.input[:3])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def test_activations_follow_the_simulated_quantization(tmp_path):
    files, result, sha, quant, qdq, _ = _converted(tmp_path, "llama2-tiny")
    _, feeds = consistent_graph_feeds(files["model"], seed=1, weight_bytes=1)
    feeds = block_correspondence(files["model"]).graph_feeds(feeds, [i.name for i in sha.graph.input])
    # Encoded activations upstream of every Softmax: no tie can have flipped yet.
    produced = {o: n for n in sha.graph.node for o in n.output}
    after_softmax: set[str] = set()
    for n in sha.graph.node:
        if n.op_type == "Softmax" or any(i in after_softmax for i in n.input):
            after_softmax.update(n.output)
    early = [t for t, e in quant.items() if t in produced and t not in after_softmax and e.dtype == "int"]
    assert len(early) > 10
    got = _run_with_outputs(qdq, feeds, early)
    sim = refimpl.run(str(result.model_path), feeds, encodings=quant, dtype=np.float64, outputs=early + [o.name for o in sha.graph.output])
    for t in early:
        step = float(np.max(quant[t].scale))
        assert np.abs(got[t] - sim[t]).max() <= step * 1.001, t
    # The outputs: closer to the simulation than the simulation is to the float model.
    float_ref = refimpl.run(str(result.model_path), feeds, dtype=np.float64)
    for o in sha.graph.output:
        rms = lambda a: float(np.sqrt(np.mean(np.square(a))))
        assert rms(got[o.name] - sim[o.name]) <= 0.75 * rms(sim[o.name] - float_ref[o.name]), o.name


def test_emit_qdq_without_encodings_is_a_usage_error(tmp_path):
    files = write_example("gpt2-tiny", tmp_path / "in")
    r = subprocess.run([sys.executable, "-m", "mha2sha", "convert", str(files["model"]), "-o", str(tmp_path / "out"), "--emit-qdq"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--emit-qdq needs" in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
