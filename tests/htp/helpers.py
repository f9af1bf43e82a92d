"""Shared steps of the HTP tests: convert, make feeds, run MHA and SHA on HTP, compare.

The oracle is the MHA model itself, run on the same HTP backend. Float models run in fp16
there, so SHA cannot be bit-exact in general (another summation order rounds differently);
the bound below is tied to the backend's own fp16 error on the MHA model:

    max |SHA_htp - MHA_htp|  <=  2 * max |MHA_htp - MHA_cpu|  +  2**-9 * scale

where MHA_cpu is onnxruntime's float32 CPU result and scale = max(1, max |MHA_cpu|). A
swapped head, a lost mask or a wrong cache slice moves outputs by O(scale), far above it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from mha2sha import htp
from mha2sha.correspondence import block_correspondence
from verify.run import consistent_graph_feeds


def example(name: str, workdir: Path) -> tuple[Path, Path]:
    subprocess.run([sys.executable, "-m", "mha2sha", "example", name, "-o", str(workdir)], check=True,
                   capture_output=True)
    return workdir / f"{name}.onnx", workdir / f"{name}.encodings"


def convert(model: Path, out: Path, *args: str) -> Path:
    r = subprocess.run([sys.executable, "-m", "mha2sha", "convert", str(model), "-o", str(out), *args],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return next(p for p in out.glob("*.onnx") if not p.stem.endswith("_qdq"))


def feeds_for(mha: Path, sha: Path, *, ranges: dict | None = None, feeds: dict | None = None,
              **split_options) -> tuple[dict, dict, list]:
    """Feeds of the MHA model, the same values as the SHA model's inputs, and the specs that
    map the SHA outputs back to the MHA layout. ``ranges`` {input: (lo, hi)} clips float
    inputs into their calibrated range (what quantized models are fed)."""
    if feeds is None:
        _, feeds = consistent_graph_feeds(mha, seed=0, weight_bytes=mha.stat().st_size)
    for name, (lo, hi) in (ranges or {}).items():
        if name in feeds and np.issubdtype(feeds[name].dtype, np.floating):
            feeds[name] = np.clip(feeds[name], lo, hi).astype(feeds[name].dtype)
    corr = block_correspondence(mha, **split_options)
    wanted = [i.name for i in onnx.load(str(sha), load_external_data=False).graph.input]
    return feeds, corr.graph_feeds(feeds, wanted), corr


def sha_in_mha_layout(outputs: dict, corr) -> dict:
    return corr.graph_values(outputs)


def cpu(model: Path, feeds: dict) -> dict:
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def assert_runs_whole(run: htp.HtpRun, what: str) -> None:
    assert run.runs_whole, f"{what} does not run whole on HTP: {run.error} {run.qnn_errors} {run.rejected}"


def assert_sha_equals_mha(mha_htp: dict, sha_htp: dict, mha_cpu: dict) -> dict:
    """The documented bound (module docstring); returns the errors per output."""
    errors = {}
    for name, expected in mha_cpu.items():
        if not np.issubdtype(expected.dtype, np.floating):
            continue
        got = sha_htp[name].astype(np.float64)
        ref = mha_htp[name].astype(np.float64)
        # A query row with every key masked (left padding) is NaN in fp16 for both models.
        both_nan = np.isnan(got) & np.isnan(ref)
        assert (np.isnan(got) == np.isnan(ref)).all(), f"{name}: NaN in one model only"
        got, ref, expected = np.where(both_nan, 0, got), np.where(both_nan, 0, ref), np.where(both_nan, 0, expected)
        scale = max(1.0, float(np.abs(expected).max()))
        fp16_error = float(np.abs(ref - expected).max())
        bound = 2 * fp16_error + 2.0 ** -9 * scale
        err = float(np.abs(got - ref).max())
        assert err <= bound, f"{name}: SHA differs from MHA on HTP by {err:.3g} > {bound:.3g} (MHA fp16 error {fp16_error:.3g})"
        errors[name] = err
    return errors


def calibrated_ranges(encodings: dict) -> dict:
    """{tensor: (lo, hi)} of every per-tensor int encoding (refimpl.quant conventions)."""
    out = {}
    for name, e in encodings.items():
        if e.dtype == "int" and not np.ndim(e.scale):
            lo = float(e.offset) * float(e.scale)
            out[name] = (lo, lo + (2 ** e.bitwidth - 1) * float(e.scale))
    return out
