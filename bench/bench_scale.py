"""Scale benchmark: conversion vs `cp` of the same files, side by side, with peak memory.

Generates (or reuses) Llama-shaped models with external data, then measures in one run:
`cp` of the model files to a fresh folder on the same disk (and `cp` + `sync`), the
conversion (no verification) and the per-block verification, each as a separate process
under /usr/bin/time -v for wall time and peak RSS. The steps are interleaved over several
rounds, each round starting with another step (a virtual machine's disk is noisy: `cp` of
the same file varies 3x from minute to minute); medians and ratios to `cp` are printed.

    python bench/bench_scale.py --size 1b            # 16 x 2048, 32 heads / 8 kv heads
    python bench/bench_scale.py --size 7b --dtype float16
    python bench/bench_scale.py --model path/to/model.onnx
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
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


def settle() -> None:
    """Before every step: nothing dirty left from the step before (its writeback would be
    charged to this one)."""
    subprocess.run(["sync"], check=True)
    time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="1b")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--model", help="use this model instead of generating one")
    ap.add_argument("--work", default="/work/bench_models", help="folder for generated models and outputs")
    ap.add_argument("--link-weights", action="store_true", help="also measure --link-weights")
    ap.add_argument("--linear-to-conv", action="store_true", help="also measure --replace-linear-with-conv")
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every step, interleaved (the disk of a virtual machine is noisy)")
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
    print(f"model: {model} ({total / 2**30:.2f} GiB in {len(files)} files); page cache warm (input read before every step); "
          f"sync before every step; {args.rounds} rounds, steps interleaved")
    cp_dir = work / "cp_out"
    out = work / "sha_out"
    py = sys.executable
    copied = " ".join(str(cp_dir / f.name) for f in files)
    steps: dict[str, list[str]] = {
        "cp": ["cp", *map(str, files), str(cp_dir)],
        # The conversion fsyncs its outputs before renaming them into place (a crash never
        # leaves a finished-looking file); `cp` alone leaves its data in the page cache.
        "cp + sync": ["sh", "-c", f"cp {' '.join(map(str, files))} {cp_dir} && sync {copied}"],
    }

    def convert_cmd(extra: str) -> list[str]:
        code = (f"from mha2sha.api import convert; r = convert({str(model)!r}, {str(out)!r}, verify=False{extra}); "
                "print(len(r.converted_blocks), round(r.timings.get('split', 0), 2), round(r.timings.get('save', 0), 2), round(r.seconds, 2))")
        return [py, "-c", code]

    if args.link_weights:
        steps["convert --link-weights"] = convert_cmd(", link_weights=True")
    if args.linear_to_conv:
        steps["convert --replace-linear-with-conv"] = convert_cmd(", replace_linear_with_conv=True")
    steps["convert"] = convert_cmd("")
    results: dict[str, list[dict]] = {label: [] for label in steps}
    verify_runs: list[dict] = []
    labels = list(steps)
    for round_index in range(args.rounds):
        # Each round starts with a different step: whatever runs first after a round's
        # large deletions was seen to run up to 2x slower (a position effect, not the step's).
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            cmd = steps[label]
            for folder in (cp_dir, out):
                shutil.rmtree(folder, ignore_errors=True)
            cp_dir.mkdir(parents=True)
            warm(files)
            settle()
            results[label].append(timed(cmd))
        if not args.skip_verify and not verify_runs:
            # The plain conversion's output (no link to the input's data file) is verified.
            sha = next(out.glob("*.onnx"))
            warm(files)
            settle()
            verify_runs.append(timed([py, "-m", "mha2sha", "verify", str(model), str(sha), "-o", str(work / "verify_out"), "--no-end-to-end"]))
    for folder in (cp_dir, out):
        shutil.rmtree(folder, ignore_errors=True)
    if verify_runs:
        results["verify (per block)"] = verify_runs
    for label in steps:
        if label.startswith("convert"):
            blocks, split_s, save_s, inner = results[label][-1]["stdout"].split()[-4:]
            print(f"{label} (last round): {blocks} blocks; graph pass (find + split) {split_s} s, save {save_s} s, in-process total {inner} s")
    cp = statistics.median(r["seconds"] for r in results["cp"])
    cp_sync = statistics.median(r["seconds"] for r in results["cp + sync"])
    print(f"{'step':<24}{'median s':>10}{'min s':>8}{'max s':>8}{'x cp':>7}{'x cp+sync':>11}{'peak RSS MB':>13}")
    for label, runs in results.items():
        secs = [r["seconds"] for r in runs]
        med = statistics.median(secs)
        rss = max(r["peak_rss_mb"] or 0 for r in runs)
        print(f"{label:<24}{med:>10.2f}{min(secs):>8.2f}{max(secs):>8.2f}{med / cp:>7.2f}{med / cp_sync:>11.2f}{rss:>13.0f}")
    per_round = [c["seconds"] / p["seconds"] for c, p in zip(results["convert"], results["cp"])]
    print("convert / cp per round: " + ", ".join(f"{r:.2f}" for r in per_round))
    print(json.dumps({k: [{kk: vv for kk, vv in r.items() if kk != "stdout"} for r in v] for k, v in results.items()}))


if __name__ == "__main__":
    main()
