"""The verifier's random inputs: masks are padded (left and right), token ids index their table.

Oracle: the definition of padding (a run of masked positions at the start or the end of a
row), checked on the feeds drawn for a small graph with the inputs an HF export has.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from verify.feeds import DimAssigner, random_feeds


def _model() -> onnx.ModelProto:
    table = numpy_helper.from_array(np.zeros((11, 4), np.float32), "embed")
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["h"])]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("bool_mask", TensorProto.BOOL, ["batch", 1, "seq", "total"]),
    ]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_empty_tensor_value_info("h")], [table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _padding(row: np.ndarray) -> tuple[int, int]:
    """Masked positions before the first kept one and after the last kept one."""
    kept = np.flatnonzero(row)
    return int(kept[0]), int(len(row) - 1 - kept[-1])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 13), st.integers(1, 13))
def test_masks_are_left_and_right_padded_and_keep_a_position(seed, batch, seq, total):
    feeds = random_feeds(_model(), seed=seed, dims=DimAssigner(values={"batch": batch, "seq": seq, "total": total}))
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 11  # inside the embedding table
    for name in ("attention_mask", "bool_mask"):
        mask = feeds[name]
        assert mask.shape[-1] == total
        rows = mask.reshape(-1, total).astype(bool)
        pad = total // 3
        for r, row in enumerate(rows):
            assert row.any(), f"{name}: row {r} masks every position"
            left, right = _padding(row)
            if r % 2 == 0:
                assert left >= pad and row[-1], f"{name}: row {r} is not left-padded by {pad}: {row.astype(int)}"
            else:
                assert right >= pad and row[0], f"{name}: row {r} is not right-padded by {pad}: {row.astype(int)}"
    assert feeds["attention_mask"].dtype == np.int64 and feeds["bool_mask"].dtype == np.bool_
