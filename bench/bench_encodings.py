"""Reading a large AIMET encodings file: time and peak memory of ``read_encodings`` (the
streaming reader: parse and validate, entry by entry, numbers into numpy arrays) and of the
copy a conversion makes (``clone``), beside ``json.loads`` of the same bytes (the whole
document at once), and, when ijson is installed, a bare walk over ijson's C-backend events
(what a reader built on ijson pays before any work). Each step runs in a fresh process
(peak RSS is the process's own); cpu is the step's process time (on a loaded machine the
wall time mostly measures the load).

    .venv/bin/python bench/bench_encodings.py [--mb 200] [--version 0.6.1|1.0.0|2.0.0]

The file: per-channel weight encodings (4096 channels each) and per-tensor activations,
generated with a fixed seed into a temporary folder until it reaches --mb megabytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STEP = r"""
import json, sys, time
path, what = sys.argv[1], sys.argv[2]
from mha2sha.encodings import read_encodings  # imports are not the reader's time (nor its memory: all steps pay them)
t, c = time.perf_counter(), time.process_time()
if what == "json.loads":
    with open(path, "rb") as fh:
        json.loads(fh.read())
elif what == "ijson events":
    import ijson
    with open(path, "rb") as fh:
        for _ in ijson.basic_parse(fh, use_float=True, buf_size=1 << 20):
            pass
else:
    enc = read_encodings(path)
    if what == "read + clone":
        enc.clone()
seconds, cpu = time.perf_counter() - t, time.process_time() - c
# VmHWM: this process image's own peak (ru_maxrss keeps the parent's peak across fork + exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mb": hwm / 1024}))
"""


def make_file(path: Path, megabytes: float, version: str, channels: int = 4096) -> int:
    rng = np.random.default_rng(0)
    target = megabytes * 1e6
    size, k = 0, 0
    params, acts = {}, {}
    entries: list[dict] = []
    while size < target:
        scale = (rng.random(channels) * 1e-2 + 1e-4).tolist()
        offset = (-rng.integers(0, 255, channels)).astype(float).tolist() if version == "0.6.1" else (-rng.integers(0, 255, channels)).tolist()
        name = f"layer{k}.weight"
        if version == "0.6.1":
            params[name] = [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "max": s * 255 + o * s, "min": o * s, "offset": o, "scale": s}
                            for s, o in zip(scale, offset)]
            acts[f"act{k}"] = [{"bitwidth": 16, "dtype": "int", "is_symmetric": "False", "max": 1.0, "min": -1.0, "offset": -32768.0, "scale": 3.05e-05}]
            size += channels * 150
        elif version == "1.0.0":
            entries.append({"name": name, "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 8, "is_sym": False, "scale": scale, "offset": offset})
            size += channels * 28
        else:
            entries.append({"name": name, "output_dtype": "int8", "y_scale": scale, "y_zero_point": offset, "axis": 0})
            size += channels * 28
        k += 1
    if version == "0.6.1":
        doc = {"version": "0.6.1", "activation_encodings": acts, "param_encodings": params}
    elif version == "1.0.0":
        doc = {"version": "1.0.0", "activation_encodings": [], "param_encodings": entries}
    else:
        doc = {"version": "2.0.0", "encodings": entries}
    path.write_text(json.dumps(doc))
    return k


def measure(path: Path, what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP, str(path), what], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--version", default="0.6.1", choices=["0.6.1", "1.0.0", "2.0.0"])
    ap.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # (internal: write the file, print its tensor count)
    args = ap.parse_args()
    if args.make:
        print(make_file(args.make, args.mb, args.version))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.encodings"
        tensors = int(subprocess.run([sys.executable, __file__, "--make", str(path), "--mb", str(args.mb), "--version", args.version],
                                     capture_output=True, text=True, check=True).stdout)
        mb = path.stat().st_size / 1e6
        print(f"{args.version} encodings: {mb:.0f} MB, {tensors} per-channel tensors")
        floor = measure(path, "json.loads")
        print(f"{'json.loads':>14s}: {floor['seconds']:6.2f} s (cpu {floor['cpu']:6.2f} s)  peak {floor['peak_mb']:6.0f} MB")
        try:
            import ijson  # noqa: F401  (optional: only for the comparison)
            steps = ("read", "read + clone", "ijson events")
        except ImportError:
            steps = ("read", "read + clone")
        for what in steps:
            r = measure(path, what)
            print(f"{what:>14s}: {r['seconds']:6.2f} s (cpu {r['cpu']:6.2f} s)  peak {r['peak_mb']:6.0f} MB  "
                  f"({r['seconds'] / floor['seconds']:.2f}x the time, {r['cpu'] / floor['cpu']:.2f}x the cpu, "
                  f"{r['peak_mb'] / floor['peak_mb']:.2f}x the memory of json.loads)")


if __name__ == "__main__":
    main()
