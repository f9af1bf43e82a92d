"""The op-axis table (mha2sha/analysis/opaxes.py) is the one place that says which ops the
walks see through. A QuantizeLinear/DequantizeLinear pair on the query path, the key path,
the probabilities or the attention output no longer stops the head walk: the block is
converted and computes what the original computes (oracle: onnxruntime on the original
model with the same QDQ nodes). A per-axis QDQ on the query path is refused with the reason
and the block left unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fuzz import AttentionConfig, build
from mha2sha.analysis import opaxes
from tests.converter.conftest import convert_built, merge_outputs, run_ort, sha_feeds


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _core(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]:
    """(scores MatMul, Softmax, MatMul(P, V)) of the only attention core, found by structure."""
    producers = _producers(model)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    node = producers[softmax.input[0]]
    while node.op_type != "MatMul":
        node = producers[node.input[0]]
    pv = next(n for n in model.graph.node if n.op_type == "MatMul" and n.input[0] == softmax.output[0])
    return node, softmax, pv


def _insert_qdq(model: onnx.ModelProto, tensor: str, *, scale, zero_point) -> None:
    """QuantizeLinear -> DequantizeLinear on ``tensor``, read by all of its consumers."""
    tag = f"qdq{len(model.graph.node)}"
    model.graph.initializer.extend([
        numpy_helper.from_array(np.asarray(scale, np.float32), f"{tag}.scale"),
        numpy_helper.from_array(np.asarray(zero_point, np.uint8), f"{tag}.zero_point"),
    ])
    consumers = [n for n in model.graph.node if tensor in n.input]
    for node in consumers:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = f"{tag}.dq"
    axis = {"axis": 1} if np.ndim(scale) == 1 else {}
    q = helper.make_node("QuantizeLinear", [tensor, f"{tag}.scale", f"{tag}.zero_point"], [f"{tag}.q"], name=f"{tag}.Q", **axis)
    dq = helper.make_node("DequantizeLinear", [f"{tag}.q", f"{tag}.scale", f"{tag}.zero_point"], [f"{tag}.dq"], name=f"{tag}.DQ", **axis)
    # Keep the node list topologically sorted: the pair goes right after the producer.
    nodes = list(model.graph.node)
    at = next((i + 1 for i, n in enumerate(nodes) if tensor in n.output), 0)
    nodes[at:at] = [q, dq]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _where(model: onnx.ModelProto, place: str) -> str:
    scores, softmax, pv = _core(model)
    producers = _producers(model)
    if place == "q_path":
        return scores.input[0]  # Q after its head split, read by MatMul(Q, K^T)
    if place == "q_projection":
        node = producers[scores.input[0]]
        while node.op_type != "MatMul":
            node = producers[node.input[0]]
        return node.output[0]  # the q_proj output, before the Reshape into heads
    if place == "k_path":
        return scores.input[1]
    if place == "probs":
        return softmax.output[0]
    if place == "attention_output":
        return pv.output[0]  # walked downward to the merge point
    raise AssertionError(place)


CONFIG = AttentionConfig(heads=4, kv_heads=2, mlp=False, layers=1, rope="rotate_half")


@pytest.mark.parametrize("place", ["q_path", "q_projection", "k_path", "probs", "attention_output"])
def test_a_qdq_pair_converts_and_matches_onnxruntime(place):
    built = build(CONFIG, seed=4)
    model = built.model
    scale = 1.0 / 128 if place == "probs" else 0.05
    _insert_qdq(model, _where(model, place), scale=scale, zero_point=0 if place == "probs" else 128)
    onnx.checker.check_model(model)
    feeds = built.make_feeds(2)
    expected = run_ort(model, feeds)
    # The QDQ pair is not a no-op here: without it the outputs differ.
    assert not np.allclose(expected["output"], built.reference(feeds)["output"], atol=1e-4)

    converted, result = convert_built(model)
    assert [b.converted for b in result.blocks] == [True], [b.reason for b in result.blocks]
    per_head_q = [n for n in converted.graph.node if n.op_type == "QuantizeLinear"]
    # One per query head; on K^T (read after its GQA repeat) the query heads of a kv group
    # share one: the emitter makes each distinct (op, inputs, attributes) node once.
    assert len(per_head_q) == (CONFIG.kv_heads if place == "k_path" else CONFIG.heads)
    got = merge_outputs(run_ort(converted, sha_feeds(feeds, result)), result)
    for name in built.output_names:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_per_axis_qdq_on_the_query_path_is_refused_with_the_reason():
    built = build(CONFIG, seed=4)
    model = built.model
    # A per-head-dim scale on Q [B, H, S, D] quantizes along axis 1: the heads. Sharing it
    # between heads would be wrong, so the walk stops and says why.
    _insert_qdq(model, _where(model, "q_path"), scale=np.full(CONFIG.heads, 0.05), zero_point=np.full(CONFIG.heads, 128))
    onnx.checker.check_model(model)
    converted, result = convert_built(model)
    assert [b.converted for b in result.blocks] == [False]
    assert "per-axis" in result.blocks[0].reason, result.blocks[0]
    assert sum(n.op_type == "Softmax" for n in converted.graph.node) == 1  # left unchanged


def test_one_elementwise_set_is_read_by_every_walk():
    from mha2sha import ar_tokens, lora_adaptors  # noqa: F401  (both import the table)

    assert {"QuantizeLinear", "DequantizeLinear"} <= opaxes.ELEMENTWISE
    assert ar_tokens._SAME_SHAPE | ar_tokens._BROADCAST >= opaxes.ELEMENTWISE
    assert not hasattr(lora_adaptors, "_ELEMENTWISE")
    from mha2sha.analysis import rules

    assert not hasattr(rules, "ELEMENTWISE")
    # Every kind in the table has exactly one rule.
    kinds = {e.kind for e in opaxes.TABLE.values() if e.heads} - {"elementwise", "split"}
    assert kinds == set(rules._BY_KIND)
    # ... and every kind has exactly one rule in the tokens rebuild (it follows the sequence
    # axis through the ops of the table only).
    assert {e.kind for e in opaxes.TABLE.values()} == set(ar_tokens._RULES)


def _with_shrink_on_the_query_path(model: onnx.ModelProto) -> None:
    scores, _, _ = _core(model)
    # Shrink (elementwise, not in the table): y = x - 0.1 above 0.5, x + 0.1 below -0.5, else 0.
    shrink = helper.make_node("Shrink", [scores.input[0]], ["q.shrunk"], name="Shrink0", lambd=0.5, bias=0.1)
    scores.input[0] = "q.shrunk"
    nodes = list(model.graph.node)
    at = nodes.index(scores)
    nodes[at:at] = [shrink]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def test_adding_an_op_to_the_head_walk_is_one_table_entry(monkeypatch):
    built = build(CONFIG, seed=4)
    model = built.model
    _with_shrink_on_the_query_path(model)
    assert "Shrink" not in opaxes.TABLE
    _, result = convert_built(model)
    assert not result.blocks[0].converted
    assert "no rule for Shrink" in result.blocks[0].reason + result.blocks[0].stopped_at, result.blocks[0]

    # The one entry: Shrink maps its input's axes to its output's one for one.
    monkeypatch.setitem(opaxes.TABLE, "Shrink", opaxes.OpAxes("elementwise", unary=True))
    feeds = built.make_feeds(2)
    expected = run_ort(model, feeds)
    converted, result = convert_built(model)
    assert [b.converted for b in result.blocks] == [True], [b.reason for b in result.blocks]
    assert sum(n.op_type == "Shrink" for n in converted.graph.node) == CONFIG.heads
    got = merge_outputs(run_ort(converted, sha_feeds(feeds, result)), result)
    for name in built.output_names:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_the_report_lists_every_stop_of_the_walk():
    """Shrink on the query and on the key path: the refusal names the query path's stop, and
    the report lists both (a user fixing one would meet the other next)."""
    from mha2sha.console import blocks_table

    built = build(CONFIG, seed=4)
    model = built.model
    for i, name in ((0, "q"), (1, "k")):
        scores, _, _ = _core(model)  # re-read: extending the node list copies the nodes
        shrink = helper.make_node("Shrink", [scores.input[i]], [f"{name}.shrunk"], name=f"Shrink_{name}", lambd=0.5)
        scores.input[i] = f"{name}.shrunk"
        nodes = list(model.graph.node)
        nodes[nodes.index(scores):nodes.index(scores)] = [shrink]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    _, result = convert_built(model)
    block = result.blocks[0]
    assert not block.converted and block.stopped_at == "Shrink(Shrink_q)"
    assert sorted(s.split(":")[0] for s in block.stops) == ["k", "q"], block.stops
    assert all("no rule for Shrink" in s for s in block.stops)
    assert block.as_dict()["stops"] == block.stops
    table = blocks_table(result.blocks)
    assert "Shrink(Shrink_k)" in table and "Shrink(Shrink_q)" in table


def test_softsign_on_the_query_path_converts_with_its_one_table_entry():
    """Softsign (x / (1 + |x|)) was added to the head walk by one line in opaxes.TABLE (the
    unary elementwise group): a graph with it on the query path, after the head split, is
    converted per head and computes what onnxruntime computes on the original."""
    assert opaxes.TABLE["Softsign"] == opaxes.OpAxes("elementwise", unary=True)
    built = build(CONFIG, seed=4)
    model = built.model
    scores, _, _ = _core(model)
    softsign = helper.make_node("Softsign", [scores.input[0]], ["q.softsign"], name="Softsign0")
    scores.input[0] = "q.softsign"
    nodes = list(model.graph.node)
    nodes[nodes.index(scores):nodes.index(scores)] = [softsign]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    feeds = built.make_feeds(2)
    expected = run_ort(model, feeds)
    assert not np.allclose(expected["output"], built.reference(feeds)["output"], atol=1e-4)  # Softsign is not a no-op
    converted, result = convert_built(model)
    assert [b.converted for b in result.blocks] == [True], [(b.reason, b.stopped_at) for b in result.blocks]
    assert sum(n.op_type == "Softsign" for n in converted.graph.node) == CONFIG.heads
    got = merge_outputs(run_ort(converted, sha_feeds(feeds, result)), result)
    for name in built.output_names:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5, err_msg=name)
