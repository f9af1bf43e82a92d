"""Scale benchmark: the console command users run, beside `cp -r` + sync and the disk's floor.

Generates (or reuses) Llama-shaped models with external data (bench/llama_gen.py), then
measures in one run, each step a separate process, interleaved over several rounds (each
round starting with another step: a virtual machine's disk is noisy):

- `cp -r` of the model folder to a fresh folder on the same disk, then `sync`;
- `dd oflag=direct` of the same byte count (the disk's direct-write floor), then `sync`;
- `mha2sha convert MODEL -o OUT` exactly as users run it (every block verified; the
  end-to-end run too where the model fits in memory), and with `--link-weights` and
  `--replace-linear-with-conv` when asked.

Wall time of each process, and the peak of the summed RSS of its whole process tree
(sampled every 20 ms from /proc: the conversion's verification workers count); medians and
ratios to `cp -r` + sync and to the floor are printed, with the conversion's own timings
(graph pass, save, verification) from its report.

    python bench/bench_scale.py --size 1b --link-weights --linear-to-conv --rounds 3
    python bench/bench_scale.py --size 7b --dtype float16 --link-weights --linear-to-conv --rounds 3
    python bench/bench_scale.py --model path/to/model.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIZES = {
    "1b": dict(layers=16, hidden=2048, heads=32, kv_heads=8, intermediate=8192, vocab=32000),
    "7b": dict(layers=32, hidden=4096, heads=32, kv_heads=32, intermediate=11008, vocab=32000),
}
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(root: int) -> int:
    """Summed resident bytes of ``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * _PAGE
        except OSError:
            pass
    return total


def timed(cmd: list[str]) -> dict:
    """Run ``cmd``; wall seconds and the peak RSS of its process tree in MB."""
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{stderr[-3000:]}")
    return {"seconds": wall, "peak_rss_mb": peak / 2**20, "stdout": stdout}


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
    ap.add_argument("--work", default="/work/bench-data", help="folder for generated models and outputs (never the repository)")
    ap.add_argument("--link-weights", action="store_true", help="also measure `mha2sha convert --link-weights`")
    ap.add_argument("--linear-to-conv", action="store_true", help="also measure `mha2sha convert --replace-linear-with-conv`")
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
    print(f"model: {model} ({total / 2**30:.2f} GiB in {len(files)} files); {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the start; page cache warm (input read before every step); sync before every "
          f"step; {args.rounds} rounds, steps interleaved")
    cp_dir = work / "cp_out"
    dd_file = work / "dd_out"
    out = work / "sha_out"
    cli = str(Path(sys.executable).with_name("mha2sha"))
    block = 16 << 20
    steps: dict[str, list[str]] = {
        # The conversion fsyncs its outputs before renaming them into place; `cp` alone
        # leaves its data in the page cache: `cp -r` + sync is the like-for-like figure.
        "cp -r + sync": ["sh", "-c", f"cp -r {model.parent} {cp_dir} && sync"],
        "dd oflag=direct": ["sh", "-c", f"dd if=/dev/zero of={dd_file} bs={block} count={-(-total // block)} oflag=direct status=none && sync"],
        "mha2sha convert": [cli, "convert", str(model), "-o", str(out)],
    }
    if args.link_weights:
        steps["convert --link-weights"] = [*steps["mha2sha convert"], "--link-weights"]
    if args.linear_to_conv:
        steps["convert --replace-linear-with-conv"] = [*steps["mha2sha convert"], "--replace-linear-with-conv"]
    results: dict[str, list[dict]] = {label: [] for label in steps}
    inner: dict[str, list[dict]] = {label: [] for label in steps if "convert" in label}
    labels = list(steps)
    for round_index in range(args.rounds):
        shift = round_index % len(labels)  # each round starts with another step
        for label in labels[shift:] + labels[:shift]:
            for folder in (cp_dir, out):
                shutil.rmtree(folder, ignore_errors=True)
            dd_file.unlink(missing_ok=True)
            warm(files)
            settle()
            results[label].append(timed(steps[label]))
            if label in inner:
                report = json.loads((out / "verification_report.json").read_text())
                if report["status"] != "pass":
                    raise SystemExit(f"{label}: verification {report['status']}")
                inner[label].append(report["timings"])
    for folder in (cp_dir, out):
        shutil.rmtree(folder, ignore_errors=True)
    dd_file.unlink(missing_ok=True)
    cp = statistics.median(r["seconds"] for r in results["cp -r + sync"])
    floor = statistics.median(r["seconds"] for r in results["dd oflag=direct"])
    print(f"{'step':<36}{'median s':>10}{'min s':>8}{'max s':>8}{'x cp+sync':>11}{'x floor':>9}{'peak tree RSS MB':>18}")
    for label, runs in results.items():
        secs = [r["seconds"] for r in runs]
        med = statistics.median(secs)
        rss = max(r["peak_rss_mb"] for r in runs)
        print(f"{label:<36}{med:>10.2f}{min(secs):>8.2f}{max(secs):>8.2f}{med / cp:>11.2f}{med / floor:>9.2f}{rss:>18.0f}")
    for label, timings in inner.items():
        keys = ["split", "save", "verify_prepare", "verify_cut_converted", "verify_wait", "total"]
        med = {k: statistics.median(t.get(k, 0.0) for t in timings) for k in keys}
        print(f"{label} (medians of its report's timings): graph pass (find + split) {med['split']:.2f} s, save (write + "
              f"blocks verified meanwhile) {med['save']:.2f} s, verification after the save {med['verify_wait']:.2f} s, "
              f"in-process total {med['total']:.2f} s")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)")
    per_round = [c["seconds"] / p["seconds"] for c, p in zip(results["mha2sha convert"], results["cp -r + sync"])]
    print("mha2sha convert / (cp -r + sync) per round: " + ", ".join(f"{r:.2f}" for r in per_round))
    print(json.dumps({"results": {k: [{kk: vv for kk, vv in r.items() if kk != "stdout"} for r in v] for k, v in results.items()},
                      "timings": inner}))


if __name__ == "__main__":
    main()
