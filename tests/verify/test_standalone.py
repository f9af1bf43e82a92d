"""The verifier stands alone: with the converter made unimportable, it still derives the
correspondence of a hand-written pair and verifies it per block."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import onnx

from tests.verify import handmade as hm

ROOT = Path(__file__).resolve().parents[2]


def test_verify_imports_nothing_from_mha2sha(tmp_path):
    p = hm.Pair(batch=1, layers=1, past=2, cache_layout="head_major")
    w = hm.params(p)
    onnx.save(hm.build_mha(p, w), tmp_path / "mha.onnx")
    onnx.save(hm.build_sha(p, w), tmp_path / "sha.onnx")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["mha2sha"] = None  # any import of the converter fails
        import pkgutil, importlib, verify
        for m in pkgutil.iter_modules(verify.__path__):
            importlib.import_module("verify." + m.name)
        from verify.graphs import load, infer_shapes
        from verify.derive import derive_correspondence
        from verify.run import verify_models
        from verify.report import verdict
        a, b = load({str(tmp_path / "mha.onnx")!r}), load({str(tmp_path / "sha.onnx")!r})
        infer_shapes(a); infer_shapes(b)
        corr, unmatched = derive_correspondence(a, b)
        report = verify_models({str(tmp_path / "mha.onnx")!r}, {str(tmp_path / "sha.onnx")!r}, corr)
        report["unmatched"] = unmatched
        print(len(report["blocks"]), verdict(report)[1])
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["1", "PASS"]
