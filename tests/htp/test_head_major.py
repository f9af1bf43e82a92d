"""``--kv-cache-io head-major`` on HTP: the caches enter as one [kv heads, ...] tensor each and
are split once along the head axis (no per-head Gather); the model runs whole on HTP with
CPU fallback disabled, equals the MHA model there within the suite's bound and equals the
per-head-cache SHA model on HTP exactly (the same arithmetic: only data movement differs).

Oracle: the MHA model on the same backend (tests/htp/helpers), and the default SHA model."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

from mha2sha import htp
from tests.htp import helpers
from verify import correspondence

pytestmark = pytest.mark.htp


@pytest.mark.parametrize("name", ["llama2-tiny", "llama3-tiny"])
def test_head_major_caches_run_whole_on_htp_without_gather_and_equal_mha(name, tmp_path):
    model, _ = helpers.example(name, tmp_path / "in")
    per_head = helpers.convert(model, tmp_path / "per_head")
    head_major = helpers.convert(model, tmp_path / "head_major", "--kv-cache-io", "head-major")
    ops = collections.Counter(n.op_type for n in onnx.load(str(head_major), load_external_data=False).graph.node)
    assert ops["Gather"] <= collections.Counter(n.op_type for n in onnx.load(str(per_head)).graph.node)["Gather"], ops
    feeds, per_head_feeds, per_head_specs = helpers.feeds_for(model, per_head)
    specs = correspondence.read(tmp_path / "head_major" / "correspondence.json")
    wanted = [i.name for i in onnx.load(str(head_major), load_external_data=False).graph.input]
    head_major_feeds = specs.graph_feeds(feeds, wanted)
    assert any(v.ndim == feeds[k].ndim for k, v in head_major_feeds.items() if k in feeds and k.startswith("past"))
    mha_run = htp.run(model, feeds)
    helpers.assert_runs_whole(mha_run, "the MHA model")
    per_head_run = htp.run(per_head, per_head_feeds)
    helpers.assert_runs_whole(per_head_run, "the per-head-cache SHA model")
    run = htp.run(head_major, head_major_feeds)
    helpers.assert_runs_whole(run, "the head-major-cache SHA model")
    got = specs.graph_values(run.outputs)
    helpers.assert_sha_equals_mha(mha_run.outputs, got, helpers.cpu(model, feeds))
    same = per_head_specs.graph_values(per_head_run.outputs)
    for key, value in same.items():
        assert np.array_equal(got[key], value), (key, float(np.max(np.abs(got[key].astype(np.float64) - value))))
