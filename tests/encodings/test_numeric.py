"""The reader's numeric form of every encodings file fuzz.make_encodings writes (every version
and scheme: per-tensor, per-channel, per-block, LPBQ, float16) fake-quantizes exactly as the
producer's own numeric form (``AimetEncodings.quant``, written from the AIMET arithmetic in
fuzz, independently of mha2sha.encodings)."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, note, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from fuzz import build, make_encodings
from fuzz.strategies import attention_configs, encoding_schemes
from mha2sha.encodings import numeric_encodings, read_encodings
from mha2sha.graph.io import load_model
from refimpl.quant import quantize_dequantize


@settings(max_examples=max(12, settings().max_examples // 2))  # 12 in ci, more under the release profile
@given(
    attention_configs(dtype="float32", shuffle=False, attention_op=False),
    st.sampled_from(["0.6.1", "1.0.0", "2.0.0"]).flatmap(lambda v: st.tuples(st.just(v), encoding_schemes(v))),
    st.integers(0, 2**16),
)
def test_read_encodings_quantize_like_the_producer(tmp_path_factory, cfg, version_scheme, seed):
    version, scheme = version_scheme
    note(f"{version} {scheme}")
    tmp = tmp_path_factory.mktemp("numeric")
    built = build(cfg, seed=1)
    onnx.save(built.model, tmp / "m.onnx")
    produced = make_encodings(built, version=version, seed=seed, scheme=scheme)
    produced.write(tmp / "m.encodings")
    read = numeric_encodings(read_encodings(tmp / "m.encodings"), load_model(tmp / "m.onnx").model)
    assert set(read) == set(produced.quant)
    weights = {t.name: numpy_helper.to_array(t) for t in built.model.graph.initializer}
    rng = np.random.default_rng(seed)
    for name, want in produced.quant.items():
        x = weights[name].astype(np.float64) if name in weights else rng.standard_normal((3, 5)) * 4
        x = x * 1.3 + rng.standard_normal(x.shape) * 0.1  # values off the grid, some out of range
        got, expected = quantize_dequantize(x, read[name]), quantize_dequantize(x, want)
        if want.bitwidth > 24:
            # int32 biases: the producer keeps float32 scales, whose arithmetic cannot resolve a
            # 32-bit grid; the reader keeps the file's float64 values. Within one step.
            step = np.max(np.asarray(want.scale, dtype=np.float64))
            np.testing.assert_allclose(got, expected, rtol=0, atol=1.01 * step, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
