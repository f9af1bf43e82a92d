"""Speed of the graph rewrite alone: finding + splitting every attention block, weights not
read or written (they stay memory-mapped), on Llama-shaped models from bench/llama_gen.py.

The pass is what ``mha2sha.pipeline.split_model`` does: shape inference, finding and
analysing the blocks, emitting the per-head nodes, dead-node removal. Each run is a fresh
process (nothing cached between runs); the machine is a shared virtual machine whose CPU
speed varies by up to 30 % from one second to the next, so several runs are made and the
best and the median printed, per 32-head layer, beside the issue's reference figure of
0.5 s per 32-head layer (the proprietary tool).

    python bench/bench_convert.py --size 7b --dtype float16 --runs 5
    python bench/bench_convert.py --model path/to/model.onnx
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

REFERENCE_SECONDS_PER_LAYER = 0.5  # the proprietary tool, per 32-head layer (issue 9)

_RUN = r"""
import json, sys, time
from mha2sha.graph.io import load_model
import mha2sha.pipeline as pipeline
stages = {}
def timed(name):
    inner = getattr(pipeline, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - t
    setattr(pipeline, name, wrapper)
for name in ("prepare", "analyze", "split_block", "cleanup"):
    timed(name)
model = load_model(sys.argv[1]).model
start = time.perf_counter()
result = pipeline.split_model(model)
total = time.perf_counter() - start
nodes = sum(1 for _ in model.graph)
print(json.dumps({"total": total, "stages": stages, "blocks": len(result.converted),
                  "heads": [b.heads for b in result.converted][:1], "nodes": nodes}))
"""


def main() -> None:
    from bench_scale import SIZES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="7b")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float16")
    ap.add_argument("--model", help="use this model instead of generating one")
    ap.add_argument("--work", default="/work/bench_models")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if args.model:
        model = Path(args.model)
    else:
        from llama_gen import generate

        name = f"llama{args.size}_{args.dtype}"
        model = Path(args.work) / name / f"{name}.onnx"
        if not model.exists():
            t0 = time.perf_counter()
            generate(model.parent, dtype=args.dtype, name=name, **SIZES[args.size])
            print(f"generated {model} in {time.perf_counter() - t0:.1f} s")
    runs = []
    for _ in range(args.runs):
        proc = subprocess.run([sys.executable, "-c", _RUN, str(model)], capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    layers = runs[0]["blocks"]
    per_layer = sorted(r["total"] / layers for r in runs)
    best = min(runs, key=lambda r: r["total"])
    print(f"model: {model.name}: {layers} attention blocks of {runs[0]['heads'][0]} heads; {best['nodes']} nodes after the split")
    print(f"graph pass per layer over {len(runs)} runs: best {per_layer[0] * 1000:.1f} ms, median {statistics.median(per_layer) * 1000:.1f} ms, "
          f"worst {per_layer[-1] * 1000:.1f} ms")
    print(f"vs the reference tool's {REFERENCE_SECONDS_PER_LAYER} s per layer: {REFERENCE_SECONDS_PER_LAYER / statistics.median(per_layer):.1f}x faster (median), "
          f"{REFERENCE_SECONDS_PER_LAYER / per_layer[0]:.1f}x (best)")
    stages = ", ".join(f"{k} {v:.3f} s" for k, v in best["stages"].items())
    print(f"best run: {best['total']:.2f} s in all ({stages})")


if __name__ == "__main__":
    main()
