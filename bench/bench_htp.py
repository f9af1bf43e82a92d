"""What Qualcomm's HTP graph preparer makes of the MHA model and of its SHA conversions.

Not a test: prints, side by side for one model, the preparer's deterministic figures
(mha2sha.htp: ops kept in the run list, estimated DDR read/write per inference, spill/fill
bytes) for the MHA model and for the SHA model under each flag combination, at each
sequence length, plus whether each ran whole on HTP (CPU fallback disabled, fp16).

    python bench/bench_htp.py                      # 1 layer, 2048 wide, 32 / 8 heads, seq 128 and 512
    python bench/bench_htp.py --seq 128 --json out.json

Needs onnxruntime-qnn (pip install onnxruntime-qnn==2.7.0). Timing on the x86 emulator
means nothing, so none is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_gen import generate  # noqa: E402

from mha2sha import htp  # noqa: E402

FLAGS = {
    "default": [],
    "conv": ["--replace-linear-with-conv"],
    "conv+o_proj": ["--replace-linear-with-conv", "--optimize-o-proj"],
}


def _feeds(seq: int, head_dim: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    pos = np.arange(seq)[:, None] / (10000.0 ** (np.arange(0, head_dim, 2) / head_dim))[None]
    angles = np.concatenate([pos, pos], axis=-1)[None].astype(np.float32)
    mask = np.triu(np.full((seq, seq), -1e4, np.float32), 1)[None, None]
    return {"input_ids": rng.integers(0, vocab, (1, seq)).astype(np.int64), "attention_mask": mask,
            "cos": np.cos(angles), "sin": np.sin(angles)}


def _row(label: str, run: htp.HtpRun) -> dict:
    return {"model": label, "runs_whole": run.runs_whole, "runlist": run.runlist, "in_runlist": run.in_runlist,
            "ddr_read_MB": None if run.ddr_read is None else round(run.ddr_read / 1e6, 2),
            "ddr_write_MB": None if run.ddr_write is None else round(run.ddr_write / 1e6, 2),
            "spill_MB": None if run.spill is None else round(run.spill / 1e6, 2),
            "fill_MB": None if run.fill is None else round(run.fill / 1e6, 2),
            "error": (run.error or "")[:160] or None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--flags", nargs="+", default=list(FLAGS), choices=list(FLAGS))
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    reason = htp.unavailable_reason()
    if reason:
        print(f"bench_htp: {reason}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_htp_") as tmp:
        tmp = Path(tmp)
        model = generate(tmp / "mha", layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                         vocab=args.vocab)
        converted = {}
        for label in args.flags:
            out = tmp / label
            r = subprocess.run([sys.executable, "-m", "mha2sha", "convert", str(model), "-o", str(out), "--no-verification",
                                *FLAGS[label]], capture_output=True, text=True, env={**os.environ, htp.DISABLE_ENV: "1"})
            if r.returncode:
                print(f"convert {label} failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
                continue
            converted[label] = next(p for p in out.glob("*.onnx"))
        print(f"one {args.layers}-layer Llama, hidden {args.hidden}, {args.heads} / {args.kv_heads} heads, fp16 on HTP "
              f"(soc {htp.SOC_MODEL}, arch {htp.HTP_ARCH})")
        header = f"{'seq':>5} {'model':<16} {'whole':>5} {'runlist':>8} {'DDR rd MB':>10} {'DDR wr MB':>10} {'spill MB':>9} {'fill MB':>8}"
        print(header)
        for seq in args.seq:
            feeds = _feeds(seq, args.hidden // args.heads, args.vocab)
            runs = [("MHA", model)] + [(f"SHA {k}", p) for k, p in converted.items()]
            base = None
            for label, path in runs:
                run = htp.run(path, feeds, keep_outputs=False)
                row = {"seq": seq, **_row(label, run)}
                rows.append(row)
                if label == "MHA":
                    base = row
                ratio = ""
                if base and base["runlist"] and row["runlist"] and label != "MHA":
                    ratio = f"  runlist x{row['runlist'] / base['runlist']:.2f}, DDR read x{row['ddr_read_MB'] / base['ddr_read_MB']:.2f}"
                print(f"{seq:>5} {label:<16} {'yes' if row['runs_whole'] else 'NO':>5} {row['runlist'] or '-':>8} "
                      f"{row['ddr_read_MB'] or '-':>10} {row['ddr_write_MB'] or '-':>10} {row['spill_MB'] if row['spill_MB'] is not None else '-':>9} "
                      f"{row['fill_MB'] if row['fill_MB'] is not None else '-':>8}{ratio}", flush=True)
                if row["error"]:
                    print(f"      {row['error']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
