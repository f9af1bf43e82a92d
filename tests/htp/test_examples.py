"""Every bundled example, MHA and converted SHA, runs whole on HTP and agrees there.

Oracle: the MHA model on the same backend (see helpers for the bound)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mha2sha import htp
from tests.htp import helpers

pytestmark = pytest.mark.htp


def _examples() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "mha2sha", "example", "--list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("name", _examples())
def test_example_runs_whole_on_htp_and_sha_equals_mha(name, tmp_path):
    model, encodings = helpers.example(name, tmp_path / "in")
    sha = helpers.convert(model, tmp_path / "out", "-e", str(encodings))
    feeds, sha_feeds, specs = helpers.feeds_for(model, sha)
    mha_run = htp.run(model, feeds)
    helpers.assert_runs_whole(mha_run, "the MHA model")
    sha_run = htp.run(sha, sha_feeds)
    helpers.assert_runs_whole(sha_run, "the SHA model")
    assert sha_run.spill == 0 and sha_run.fill == 0, (sha_run.spill, sha_run.fill)
    helpers.assert_sha_equals_mha(mha_run.outputs, helpers.sha_in_mha_layout(sha_run.outputs, specs),
                                  helpers.cpu(model, feeds))


def test_sha_compiles_to_a_context_binary_that_runs(tmp_path):
    model, encodings = helpers.example("llama3-tiny", tmp_path / "in")
    sha = helpers.convert(model, tmp_path / "out", "-e", str(encodings))
    feeds, sha_feeds, specs = helpers.feeds_for(model, sha)
    ctx = tmp_path / "sha_ctx.onnx"
    compiled = htp.run(sha, sha_feeds, context=ctx)
    helpers.assert_runs_whole(compiled, "the SHA model")
    assert compiled.context_bytes and compiled.context_bytes == ctx.stat().st_size > 10_000
    # The context model alone (no graph left to prepare) reproduces the outputs.
    again = htp.run(ctx, sha_feeds)
    helpers.assert_runs_whole(again, "the context model")
    assert again.runlist is None, "a context binary is loaded, not prepared again"
    for name, value in compiled.outputs.items():
        assert (value == again.outputs[name]).all(), name
