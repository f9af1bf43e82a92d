"""``--create-input-lists``: inputs for running the SHA model on a device, and goldens.

Written into OUTDIR (QNN's conventions):

- ``inputs/<k>/<input>.raw``: one set of random inputs of the SHA model (seeded, the same
  values the verification uses; per-head cache inputs are the slices of the MHA cache). Floats
  are written as float32, other types as the model declares them (int64 ids stay int64), C order,
  no header.
- ``input_list.txt``: one line per set, ``<input>:=<absolute path>`` separated by spaces;
  ``on_device_input_list.txt``: the same with paths relative to OUTDIR (push OUTDIR as is).
- ``goldens/<k>/<output>.raw``: the MHA model's outputs for those inputs (onnxruntime,
  float32), under the SHA model's output names (per-head outputs are the MHA output's slices);
  skipped, with a log line, when the model is too large to run here.

Files are written to a private folder and moved into place when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("mha2sha")

INPUT_LIST = "input_list.txt"
ON_DEVICE_INPUT_LIST = "on_device_input_list.txt"


def _raw(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def write_input_lists(out_dir: Path, original_path: Path, converted_path: Path, specs, *, seed: int,
                      weight_bytes: int, sets: int = 1) -> dict:
    """Write the files described in the module docstring; returns a summary for the report."""
    import onnx

    from verify.run import _CAPTURE_LIMIT_BYTES, _run_ort, consistent_graph_feeds

    fits = weight_bytes <= _CAPTURE_LIMIT_BYTES
    sha_inputs = [i.name for i in onnx.load(str(converted_path), load_external_data=False).graph.input]
    sha_outputs = [o.name for o in onnx.load(str(converted_path), load_external_data=False).graph.output]
    tmp = Path(tempfile.mkdtemp(prefix=".mha2sha-partial-inputs-", dir=out_dir))
    try:
        lines, device_lines, goldens = [], [], 0
        for k in range(sets):
            _, feeds = consistent_graph_feeds(original_path, seed=seed + k, weight_bytes=weight_bytes)
            sha_feeds = dict(feeds)
            for spec in specs:
                sha_feeds = spec.graph_feeds(sha_feeds)
            (tmp / "inputs" / str(k)).mkdir(parents=True)
            entries, device_entries = [], []
            for name in sha_inputs:
                if name not in sha_feeds:
                    continue  # an initializer listed as an input
                rel = Path("inputs") / str(k) / f"{_file_name(name)}.raw"
                _raw(sha_feeds[name]).tofile(tmp / rel)
                entries.append(f"{name}:={(out_dir / rel).resolve()}")
                device_entries.append(f"{name}:={rel.as_posix()}")
            lines.append(" ".join(entries))
            device_lines.append(" ".join(device_entries))
            if fits:
                values = dict(_run_ort(original_path, feeds))
                for spec in specs:
                    values.update(_split_outputs(spec, values))
                (tmp / "goldens" / str(k)).mkdir(parents=True)
                for name in sha_outputs:
                    if name in values:
                        _raw(values[name]).tofile(tmp / "goldens" / str(k) / f"{_file_name(name)}.raw")
                        goldens += 1
        (tmp / INPUT_LIST).write_text("\n".join(lines) + "\n")
        (tmp / ON_DEVICE_INPUT_LIST).write_text("\n".join(device_lines) + "\n")
        for entry in sorted(tmp.iterdir()):
            target = out_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not fits:
        log.info("--create-input-lists: goldens skipped (the model is too large to run here)")
    return {"sets": sets, "inputs": len(sha_inputs), "goldens": goldens, "goldens_skipped": not fits,
            "input_list": str(out_dir / INPUT_LIST), "on_device_input_list": str(out_dir / ON_DEVICE_INPUT_LIST)}


def _split_outputs(spec, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-head outputs of the SHA model, as slices of the MHA output they were cut from."""
    out = {}
    for orig, split in spec.io_splits.items():
        if split.kind == "output" and orig in values:
            if split.graph_layout == "head_major":
                out[orig] = np.stack([np.take(values[orig], index, axis=split.axis) for index in sorted(split.indices)], axis=0)
                continue
            for name, index in zip(split.names, split.indices):
                out[name] = np.take(values[orig], index, axis=split.axis)
    return out


def _file_name(tensor_name: str) -> str:
    """Tensor names may hold '/' or ':' (TorchScript exports): keep them out of file paths."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in tensor_name)
