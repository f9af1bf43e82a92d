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

Names: an entry is ``<tensor name>:=<path>`` when the name can be written safely; a name with
whitespace, ``:``, ``=``, a control character, or longer than 120 characters is written as its
safe file name instead (never verbatim: a newline in a name would inject a line). File names
keep letters, digits and ``._-``; a name that had to change gets 8 hex digits of its SHA-256.
``input_list_names.json`` maps every tensor name to its entry and file:
``{"inputs": {tensor: {"entry": ..., "file": ...}}, "outputs": {tensor: file}}``.

The files are staged with the rest of the run and moved into OUTDIR with it; a user's own
files in ``inputs/`` or ``goldens/`` are never replaced (the run refuses instead).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np

log = logging.getLogger("mha2sha")

INPUT_LIST = "input_list.txt"
ON_DEVICE_INPUT_LIST = "on_device_input_list.txt"
NAMES_FILE = "input_list_names.json"


def _raw(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def write_input_lists(staged, original_path: Path, converted_path: Path, correspondence, *, seed: int,
                      weight_bytes: int, sets: int = 1) -> dict:
    """Write the files described in the module docstring into ``staged`` (the run's
    mha2sha.outputs.OutputTransaction: they move into OUTDIR with the rest of the run, and a
    user's own files in ``inputs/`` are never replaced); returns a summary for the report."""
    import onnx

    from verify.run import _CAPTURE_LIMIT_BYTES, _run_ort, consistent_graph_feeds

    fits = weight_bytes <= _CAPTURE_LIMIT_BYTES
    graph = onnx.load(str(converted_path), load_external_data=False).graph
    sha_inputs = [i.name for i in graph.input]
    sha_outputs = [o.name for o in graph.output]
    files = unique_file_names(sha_inputs + sha_outputs)
    mapping = {"inputs": {}, "outputs": {}}
    lines, device_lines, goldens = [], [], 0
    for k in range(sets):
        _, feeds = consistent_graph_feeds(original_path, seed=seed + k, weight_bytes=weight_bytes)
        sha_feeds = correspondence.graph_feeds(feeds, sha_inputs)
        entries, device_entries = [], []
        for name in sha_inputs:
            if name not in sha_feeds:
                continue  # an initializer listed as an input
            rel = f"inputs/{k}/{files[name]}.raw"
            _raw(sha_feeds[name]).tofile(staged.path(rel))
            entry = name if entry_safe(name) else files[name]
            mapping["inputs"][name] = {"entry": entry, "file": files[name] + ".raw"}
            entries.append(f"{entry}:={staged.final(rel)}")
            device_entries.append(f"{entry}:={rel}")
        lines.append(" ".join(entries))
        device_lines.append(" ".join(device_entries))
        if fits:
            values = dict(_run_ort(original_path, feeds))
            for split in correspondence.cache_splits("output"):
                if split.original in values:
                    values.update(split.pieces(values[split.original]))
            for name in sha_outputs:
                if name in values:
                    _raw(values[name]).tofile(staged.path(f"goldens/{k}/{files[name]}.raw"))
                    mapping["outputs"][name] = files[name] + ".raw"
                    goldens += 1
    Path(staged.path(INPUT_LIST)).write_text("\n".join(lines) + "\n")
    Path(staged.path(ON_DEVICE_INPUT_LIST)).write_text("\n".join(device_lines) + "\n")
    Path(staged.path(NAMES_FILE)).write_text(json.dumps(mapping, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if not fits:
        log.info("--create-input-lists: goldens skipped (the model is too large to run here)")
    return {"sets": sets, "inputs": len(sha_inputs), "goldens": goldens, "goldens_skipped": not fits,
            "input_list": str(staged.final(INPUT_LIST)), "on_device_input_list": str(staged.final(ON_DEVICE_INPUT_LIST)),
            "names": str(staged.final(NAMES_FILE))}


# Entries of input_list.txt are "<name>:=<path>" separated by spaces, one set per line: a
# name with whitespace, "=" or ":" or a control character would break (or inject) entries.
_ENTRY_UNSAFE = re.compile(r"[\s:=\x00-\x1f\x7f]")
MAX_FILE_STEM = 120  # file systems allow 255 bytes; room for ".raw" and the hash


def entry_safe(name: str) -> bool:
    return bool(name) and len(name) <= MAX_FILE_STEM and not _ENTRY_UNSAFE.search(name)


def safe_file_name(tensor_name: str) -> str:
    """A file name for a tensor: letters, digits and ``._-`` only (TorchScript names hold '/'
    and ':'); a name that had to change, or is too long, gets 8 hex digits of its SHA-256 so
    two names never share a file."""
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in tensor_name).lstrip(".")
    if cleaned == tensor_name and 0 < len(cleaned) <= MAX_FILE_STEM:
        return cleaned
    digest = hashlib.sha256(tensor_name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[:MAX_FILE_STEM - 9] or 'tensor'}_{digest}"


def unique_file_names(names: list[str]) -> dict[str, str]:
    """Each name's file stem, distinct also where names differ only in case (case-insensitive
    file systems)."""
    out, used = {}, set()
    for name in dict.fromkeys(names):
        stem = safe_file_name(name)
        if stem.lower() in used:
            stem = f"{stem[:MAX_FILE_STEM - 9]}_{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
        used.add(stem.lower())
        out[name] = stem
    return out
