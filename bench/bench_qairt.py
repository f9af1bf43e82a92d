"""Graph pass (find + split) of Qualcomm's qairt-dev beside ours, on the same model, in one run.

qairt-dev needs Python 3.12 and its own environment (only ``qairt.optimizer`` is imported):

    /root/.pyenv/versions/3.12.1/bin/python -m venv /work/qairt-venv-bench
    /work/qairt-venv-bench/bin/pip install "qairt-dev[onnx]==0.13.0"
    python bench/bench_qairt.py MODEL.onnx --qairt-python /work/qairt-venv-bench/bin/python --rounds 3
    python bench/bench_qairt.py --htp --qairt-python /work/qairt-venv/bin/python   # HTP side by side

``--htp``: what Qualcomm's HTP graph preparer keeps (mha2sha.htp: run list ops, DDR, spill/fill)
for the MHA model, qairt-dev's SHA output and ours, on the one-layer 2048-wide 32 / 8-head
Llama of bench_htp.py (or MODEL), each with CPU fallback disabled, fp16.

Each round runs, as separate processes, qairt's ``GraphContext.from_files`` (load and its
shape inference) + ``convert_mha_to_sha`` (weights memory-mapped, nothing written), and our
``mha2sha.pipeline.split_model`` after ``load_model`` (shape inference, find, split,
cleanup). Printed: each side's load and pass seconds (medians), the ratio of the passes, and
each process's peak RSS. qairt's pass is timed without its load and shape inference; ours
includes our shape inference: the ratio is conservative for us.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

QAIRT = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from qairt.optimizer.onnx import GraphContext
from qairt.optimizer.onnx.passes._api import convert_mha_to_sha
t1 = time.perf_counter()
ctx = GraphContext.from_files(sys.argv[1])
t2 = time.perf_counter()
convert_mha_to_sha(ctx)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "pass": t3 - t2, "nodes": len(list(ctx.graph_ir)),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

OURS = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from mha2sha.graph.io import load_model
from mha2sha.pipeline import split_model
t1 = time.perf_counter()
model = load_model(sys.argv[1]).model
t2 = time.perf_counter()
split = split_model(model)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "pass": t3 - t2, "nodes": len(list(model.graph)),
                  "blocks": len(split.converted), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _run(python: str, code: str, model: Path) -> dict:
    # qairt's package __init__ sets up the SDK and asks a Qualcomm server for releases (no
    # network here: it fails); it skips that when imported from a file named like its
    # qairt-vm tool, which the optimizer does not need.
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "qairt_vm_optimizer_only.py"
        script.write_text(code)
        proc = subprocess.run([python, str(script), str(model)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{python} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def static_copy(model: Path, dims: dict[str, int]) -> Path:
    """``model`` with its symbolic input/output dimensions fixed (qairt-dev's pass needs static
    shapes), written beside it so that it reads the same data file."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    for info in list(proto.graph.input) + list(proto.graph.output):
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_value = dims.get(d.dim_param, 1)
    out = model.with_name(model.stem + "_static.onnx")
    onnx.save(proto, str(out))
    return out


QAIRT_SAVE = r"""
import sys
from qairt.optimizer.onnx import GraphContext
from qairt.optimizer.onnx.passes._api import convert_mha_to_sha
ctx = GraphContext.from_files(sys.argv[1])
convert_mha_to_sha(ctx)
ctx.save_onnx(sys.argv[2])
print("{}")
"""


def _htp_side_by_side(args) -> None:
    """MHA, qairt-dev's SHA and ours on HTP: run list ops (total and per query head), DDR, spill."""
    import os

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_htp import _feeds
    from llama_gen import generate

    from mha2sha import htp

    reason = htp.unavailable_reason()
    if reason:
        raise SystemExit(f"bench_qairt --htp: {reason}")
    with tempfile.TemporaryDirectory(prefix="bench_qairt_htp_") as tmp:
        tmp = Path(tmp)
        model = args.model or generate(tmp / "mha", layers=1, hidden=2048, heads=32, kv_heads=8, vocab=256)
        static = static_copy(model, {"batch": 1, "seq": args.seq})
        with tempfile.TemporaryDirectory() as scripts:
            script = Path(scripts) / "qairt_vm_optimizer_only.py"
            script.write_text(QAIRT_SAVE)
            qairt_out = tmp / "qairt" / "model.onnx"
            proc = subprocess.run([args.qairt_python, str(script), str(static), str(qairt_out)], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"qairt-dev failed:\n{proc.stderr[-3000:]}")
        ours_dir = tmp / "ours"
        subprocess.run([sys.executable, "-m", "mha2sha", "convert", str(static), "-o", str(ours_dir), "--no-verification"],
                       check=True, capture_output=True, env={**os.environ, htp.DISABLE_ENV: "1"})
        ours = next(p for p in ours_dir.glob("*.onnx"))
        import onnx

        heads = sum(1 for n in onnx.load(str(static), load_external_data=False).graph.node if n.op_type == "Softmax")
        heads *= args.heads_per_softmax
        feeds = _feeds(args.seq, args.head_dim, args.vocab)
        print(f"seq {args.seq}, fp16 on HTP (soc {htp.SOC_MODEL}, arch {htp.HTP_ARCH}); per head = run list / {heads} query heads")
        base = None
        for label, path in (("MHA", static), ("qairt-dev 0.13.0 SHA", qairt_out), ("mha2sha SHA", ours)):
            graph_inputs = {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}
            run = htp.run(path, {k: v for k, v in feeds.items() if k in graph_inputs}, keep_outputs=False)
            nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
            base = base or run.runlist
            print(f"{label:<22} whole {'yes' if run.runs_whole else 'NO':<3}  nodes {nodes:5d}  runlist {run.runlist}"
                  f" (x{(run.runlist or 0) / base:.2f}, {(run.runlist or 0) / heads:.1f} per head)  DDR read "
                  f"{(run.ddr_read or 0) / 1e6:.2f} MB  spill {(run.spill or 0) / 1e6:.2f} MB  fill {(run.fill or 0) / 1e6:.2f} MB"
                  + (f"  {run.error[:200]}" if run.error else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("--htp", action="store_true", help="HTP side by side (see above) instead of the graph-pass timing")
    ap.add_argument("--head-dim", type=int, default=64, help="--htp: head dim of the cos/sin feeds")
    ap.add_argument("--vocab", type=int, default=256, help="--htp: vocabulary of the input ids")
    ap.add_argument("--heads-per-softmax", type=int, default=32, help="--htp: query heads per MHA Softmax")
    ap.add_argument("--qairt-python", default="/work/qairt-venv-bench/bin/python")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=128, help="sequence length of the static copy both passes run on")
    args = ap.parse_args()
    if args.htp:
        _htp_side_by_side(args)
        return
    if args.model is None:
        ap.error("MODEL is required without --htp")
    args.model = static_copy(args.model, {"batch": 1, "seq": args.seq})
    runs: dict[str, list[dict]] = {"qairt-dev 0.13.0": [], "mha2sha": []}
    for i in range(args.rounds):
        order = [("qairt-dev 0.13.0", args.qairt_python, QAIRT), ("mha2sha", sys.executable, OURS)]
        for label, python, code in order if i % 2 == 0 else order[::-1]:
            runs[label].append(_run(python, code, args.model))
    med = {label: {k: statistics.median(r[k] for r in rs) for k in ("load", "pass")} for label, rs in runs.items()}
    for label, rs in runs.items():
        passes = ", ".join(f"{r['pass']:.2f}" for r in rs)
        print(f"{label:<18} load {med[label]['load']:6.2f} s   graph pass {med[label]['pass']:6.2f} s   "
              f"(passes {passes})   nodes after {rs[-1]['nodes']}   "
              f"peak RSS {max(r['peak_rss_mb'] for r in rs):.0f} MB")
    ratio = med["qairt-dev 0.13.0"]["pass"] / med["mha2sha"]["pass"]
    print(f"graph pass: mha2sha {ratio:.1f}x faster than qairt-dev (medians of {args.rounds} rounds, side by side)")
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
