"""refimpl.run vs onnx.reference.ReferenceEvaluator on the same decoder graphs.

Prints seconds per run for each and the ratio (ReferenceEvaluator / refimpl; > 1 means
refimpl is faster). Usage: python bench/bench_refimpl.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_gen import generate  # noqa: E402

import refimpl  # noqa: E402


def best_of(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    print(f"{'model':<36}{'refimpl s':>12}{'ReferenceEvaluator s':>22}{'ratio':>8}")
    for layers, hidden, heads, kv, seq in [(1, 64, 4, 2, 16), (2, 256, 8, 4, 32), (2, 512, 16, 4, 64)]:
        with tempfile.TemporaryDirectory() as tmp:
            path = generate(Path(tmp), layers=layers, hidden=hidden, heads=heads, kv_heads=kv, intermediate=hidden * 2, vocab=128, name="m")
            model = onnx.load(str(path))
            rng = np.random.default_rng(0)
            d = hidden // heads
            feeds = {
                "input_ids": rng.integers(0, 128, (1, seq)).astype(np.int64),
                "attention_mask": np.triu(np.full((seq, seq), -1e4, np.float32), 1)[None, None],
                "cos": rng.standard_normal((1, seq, d)).astype(np.float32),
                "sin": rng.standard_normal((1, seq, d)).astype(np.float32),
            }
            ours = best_of(lambda m=model, f=feeds: refimpl.run(m, f))
            evaluator = ReferenceEvaluator(model)
            theirs = best_of(lambda e=evaluator, f=feeds: e.run(None, f))
            label = f"{layers}L x {hidden} x {heads}h/{kv}kv, seq {seq}"
            print(f"{label:<36}{ours:>12.4f}{theirs:>22.4f}{theirs / ours:>8.2f}")


if __name__ == "__main__":
    main()
