"""Conversion speed of the graph rewrite on a 32-head, 4096-hidden Llama layer stack.

Prints seconds per layer for finding + splitting (weights sliced from the memory-mapped
file, not saved), and nodes per head in the result. Usage:

    python bench/bench_convert.py [--layers 4] [--hidden 4096] [--heads 32] [--kv-heads 32]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_gen import generate  # noqa: E402

from mha2sha.graph.io import load_model  # noqa: E402
from mha2sha.pipeline import prepare, split_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--dtype", default="float16")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = generate(Path(tmp), layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                        intermediate=args.hidden * 2, dtype=args.dtype)
        gen = time.perf_counter() - t0
        model = load_model(path).model
        before = len(list(model.graph))
        t0 = time.perf_counter()
        prepare(model)
        t_prepare = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = split_model(model)
        t_split = time.perf_counter() - t0
        after = collections.Counter(n.op_type for n in model.graph)
        layers = len(result.converted)
        heads = sum(b.heads for b in result.converted)
        attn_nodes = sum(after[k] for k in ("Softmax", "Div", "Add", "MatMul", "Slice", "Concat", "Neg", "Mul", "Transpose"))
        print(f"model: {args.layers} layers x {args.hidden} hidden x {args.heads} heads / {args.kv_heads} kv heads ({args.dtype}), generated in {gen:.1f} s")
        print(f"nodes before {before}, after {sum(after.values())}; converted blocks {layers}, heads {heads}")
        print(f"shape inference + folding: {t_prepare:.2f} s")
        print(f"find + split (incl. weight slicing from mmap): {t_split:.2f} s = {t_split / max(layers, 1):.3f} s per layer")
        print(f"nodes per head (attention ops over all blocks / heads): {attn_nodes / max(heads, 1):.1f}")
        print(f"op counts after: {dict(after.most_common(12))}")


if __name__ == "__main__":
    main()
