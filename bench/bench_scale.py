"""Scale benchmark: conversion vs `cp` of the same files, side by side, with peak memory.

Generates (or reuses) Llama-shaped models with external data, then measures in one run:
`cp` of the model files to a fresh folder on the same disk, the conversion (no
verification) and the per-block verification, each as a separate process under
/usr/bin/time -v for wall time and peak RSS. Prints ratios to `cp`.

    python bench/bench_scale.py --size 1b            # 16 x 2048, 32 heads / 8 kv heads
    python bench/bench_scale.py --size 7b --dtype float16
    python bench/bench_scale.py --model path/to/model.onnx
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIZES = {
    "1b": dict(layers=16, hidden=2048, heads=32, kv_heads=8, intermediate=8192, vocab=32000),
    "7b": dict(layers=32, hidden=4096, heads=32, kv_heads=32, intermediate=11008, vocab=32000),
}


def _drop_caches_note() -> str:
    return "page cache warm (files read once before timing)"


def timed(cmd: list[str], env=None) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; wall seconds and peak RSS in MB."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"seconds": wall, "peak_rss_mb": int(rss.group(1)) / 1024 if rss else None, "stdout": proc.stdout}


def warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="1b")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--model", help="use this model instead of generating one")
    ap.add_argument("--work", default="/work/bench_models", help="folder for generated models and outputs")
    ap.add_argument("--link-weights", action="store_true", help="also measure --link-weights")
    ap.add_argument("--skip-verify", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    if args.model:
        model = Path(args.model)
    else:
        from llama_gen import generate

        name = f"llama{args.size}_{args.dtype}"
        model = work / name / f"{name}.onnx"
        if not model.exists():
            t0 = time.perf_counter()
            generate(model.parent, dtype=args.dtype, name=name, **SIZES[args.size])
            print(f"generated {model} in {time.perf_counter() - t0:.1f} s")
    files = [model] + sorted(model.parent.glob(model.name + ".data"))
    total = sum(f.stat().st_size for f in files)
    print(f"model: {model} ({total / 2**30:.2f} GiB in {len(files)} files); {_drop_caches_note()}")
    warm(files)
    results = {}
    cp_dir = work / "cp_out"
    shutil.rmtree(cp_dir, ignore_errors=True)
    cp_dir.mkdir(parents=True)
    results["cp"] = timed(["cp", *map(str, files), str(cp_dir)])
    shutil.rmtree(cp_dir, ignore_errors=True)
    cp_dir.mkdir(parents=True)
    # The conversion fsyncs its outputs before renaming them into place (a crash never leaves
    # a finished-looking file); `cp` alone leaves the data in the page cache. Both are shown.
    copied = " ".join(str(cp_dir / f.name) for f in files)
    results["cp + sync"] = timed(["sh", "-c", f"cp {' '.join(map(str, files))} {cp_dir} && sync {copied}"])
    shutil.rmtree(cp_dir, ignore_errors=True)
    out = work / "sha_out"
    py = sys.executable
    # --link-weights first: the plain conversion's output (no hard link to the input's data
    # file left behind) is the one verified afterwards.
    variants = ([("convert --link-weights", ["link_weights=True"])] if args.link_weights else []) + [("convert", [])]
    for label, extra in variants:
        shutil.rmtree(out, ignore_errors=True)
        code = f"from mha2sha.api import convert; r = convert({str(model)!r}, {str(out)!r}, verify=False{''.join(', ' + e for e in extra)}); print(len(r.converted_blocks), round(r.timings.get('split', 0), 2), round(r.timings.get('save', 0), 2))"
        results[label] = timed([py, "-c", code])
    if not args.skip_verify:
        sha = next(out.glob("*.onnx"))
        results["verify (per block)"] = timed([py, "-m", "mha2sha", "verify", str(model), str(sha), "-o", str(work / "verify_out"), "--no-end-to-end"])
    for label, _ in variants:
        blocks, split_s, save_s = results[label]["stdout"].split()[-3:]
        print(f"{label}: {blocks} blocks; graph pass (find + split) {split_s} s, save {save_s} s")
    cp = results["cp"]["seconds"]
    cp_sync = results["cp + sync"]["seconds"]
    print(f"{'step':<24}{'seconds':>10}{'x cp':>8}{'x cp+sync':>11}{'peak RSS MB':>14}")
    for label, r in results.items():
        print(f"{label:<24}{r['seconds']:>10.2f}{r['seconds'] / cp:>8.2f}{r['seconds'] / cp_sync:>11.2f}{r['peak_rss_mb']:>14.0f}")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "stdout"} for k, v in results.items()}))
    shutil.rmtree(out, ignore_errors=True)



if __name__ == "__main__":
    main()
