"""Load models safely and lazily; save them atomically.

Loading never reads weights: external data stays memory-mapped and is only read when a
weight is sliced. Before anything is mapped, every external-data reference is checked:
the location must stay inside the model's folder (no absolute paths, no ``..``, no
symbolic link leading out: the attack classes of CVE-2022-25882, CVE-2024-27318 and
CVE-2026-27489), the file must exist and hold ``offset + length`` bytes, the length must be
the tensor's size, and no unknown keys are accepted. Saving writes into a temporary folder
inside the output folder and renames files into place only when complete, data first and
the model last, so a file that looks finished is finished.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from mha2sha.errors import InputError, OutputError
from mha2sha.outputs import OutputTransaction, safe_output_name  # noqa: F401  (callers read it here)

_EXTERNAL_KEYS = {"location", "offset", "length", "checksum"}
# Above this many bytes of weights, save with an external data file (protobuf's limit is 2 GB).
EXTERNAL_DATA_THRESHOLD = 512 * 1024 * 1024


@dataclass
class LoadedModel:
    model: ir.Model
    path: Path
    weight_bytes: int
    external: bool


def _tensor_nbytes(tensor: onnx.TensorProto) -> int:
    count = math.prod(tensor.dims) if tensor.dims else 1
    itemsize = ir.DataType(tensor.data_type).itemsize
    return math.ceil(count * itemsize)


def _inside(base: Path, candidate: Path) -> bool:
    try:
        candidate.relative_to(base)
        return True
    except ValueError:
        return False


def check_external_data(proto: onnx.ModelProto, model_path: Path, *, allow_hard_links: bool = False) -> tuple[int, bool]:
    """Validate every external-data reference; returns (weight bytes, uses external data).

    A data file with several hard links is refused unless ``allow_hard_links``: a hard link
    can give a file from outside the folder a name inside it, which no path check can see.
    """
    base = model_path.resolve().parent
    total = 0
    external = False
    sizes: dict[Path, int] = {}
    tensors = list(proto.graph.initializer)
    for node in proto.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                tensors.append(a.t)
    for tensor in tensors:
        nbytes = _tensor_nbytes(tensor)
        total += nbytes
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        external = True
        info = {entry.key: entry.value for entry in tensor.external_data}
        unknown = set(info) - _EXTERNAL_KEYS
        if unknown:
            raise InputError(model_path, f"tensor {tensor.name!r} has unknown external data keys {sorted(unknown)}")
        location = info.get("location")
        if not location:
            raise InputError(model_path, f"tensor {tensor.name!r} has external data without a location")
        rel = Path(location)
        absolute = rel.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":")
        if absolute or not rel.parts:
            raise InputError(model_path, f"external data location {location!r} of tensor {tensor.name!r} is not a relative path inside the model folder")
        if ".." in rel.parts:
            raise InputError(model_path, f"external data location {location!r} of tensor {tensor.name!r} leaves the model folder")
        target = (base / rel).resolve()
        if not _inside(base, target):
            raise InputError(model_path, f"external data location {location!r} of tensor {tensor.name!r} resolves outside the model folder")
        if not target.is_file():
            raise InputError(model_path, f"external data file {location!r} of tensor {tensor.name!r} is missing")
        size = sizes.get(target)
        if size is None:
            st = target.stat()
            if st.st_nlink > 1 and not allow_hard_links:
                raise InputError(model_path, f"external data file {location!r} has {st.st_nlink} hard links; refusing to read it (pass --allow-hard-links if you made the link, e.g. with --link-weights)")
            size = sizes[target] = st.st_size
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else nbytes
        except ValueError:
            raise InputError(model_path, f"tensor {tensor.name!r} has a non-numeric external data offset or length") from None
        if offset < 0 or length < 0:
            raise InputError(model_path, f"tensor {tensor.name!r} has a negative external data offset or length")
        if length != nbytes:
            raise InputError(model_path, f"tensor {tensor.name!r} declares {length} bytes of external data but its shape needs {nbytes}")
        if offset + length > size:
            raise InputError(model_path, f"external data file {location!r} is too short for tensor {tensor.name!r} ({size} bytes, needs {offset + length})")
    return total, external


def load_model(path: str | os.PathLike, *, allow_hard_links: bool = False, validate: bool = True) -> LoadedModel:
    """Parse, validate and lazily load an ONNX model (weights stay on disk).

    ``validate``: refuse an invalid model (mha2sha.graph.validate); off only for reloading a
    model this run already validated or wrote. IR < 4 models load as IR 4: initializers that
    IR 3 lists as graph inputs become plain initializers, so that the output is valid."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise InputError(path, f"not a valid ONNX protobuf (truncated or corrupt: {exc})") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the model: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types on garbage input
        raise InputError(path, f"not an ONNX model ({type(exc).__name__}: {exc})") from None
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.node:
        raise InputError(path, "not an ONNX model (no graph)")
    weight_bytes, external = check_external_data(proto, path, allow_hard_links=allow_hard_links)
    if validate:
        from mha2sha.graph.validate import validate_model

        validate_model(proto, path)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"malformed ONNX graph: {exc}") from None
    if model.ir_version is not None and model.ir_version < 4:
        _upgrade_ir3(model)
    base = str(path.resolve().parent)
    ir.external_data.set_base_dir(model.graph, base)
    if allow_hard_links:
        _trust_checked_locations(model, base)
    return LoadedModel(model, path, weight_bytes, external)


def _upgrade_ir3(model: ir.Model) -> None:
    """IR 3 requires every initializer to be a graph input; IR 4 does not. The converter adds
    initializers (per-head weights), so its output is written as IR 4 with the initializers
    no longer listed as inputs (the model computes the same function)."""
    initialized = set(model.graph.initializers)
    kept = [v for v in model.graph.inputs if v.name not in initialized]
    model.graph.inputs.clear()
    model.graph.inputs.extend(kept)
    model.ir_version = 4


def _trust_checked_locations(model: ir.Model, base: str) -> None:
    """Point external tensors at absolute paths that check_external_data validated, so that
    onnx_ir does not repeat its own (hard-link refusing) checks."""
    for value in model.graph.initializers.values():
        t = value.const_value
        if isinstance(t, ir.ExternalTensor):
            value.const_value = ir.ExternalTensor(os.path.join(base, t.location), t.offset, t.length, t.dtype, shape=t.shape, name=t.name, base_dir="")


def prepare_output_dir(out_dir: str | os.PathLike, input_paths: list[Path]) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out, f"cannot create the output folder: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise OutputError(out, "the output folder is not writable")
    return out


# The output transaction (lock, staging, commit): see mha2sha.outputs.
StagedOutput = OutputTransaction


def save_model(model: ir.Model, staged: StagedOutput, name: str, *, external: bool, link_weights: bool = False, progress=None,
               observer=None) -> tuple[str, dict]:
    """Write ``<name>.onnx`` (and ``<name>.onnx.data`` when external) into ``staged``.

    Returns the model file name and write statistics (bytes copied, written, linked).
    """
    from mha2sha.graph.writer import write_model

    model_file = f"{name}.onnx"
    model_path = staged.path(model_file)
    data_file = None
    if external:
        data_file = f"{model_file}.data"
        staged.path(data_file)
        if link_weights:
            staged.path(f"{data_file}.weights")
    try:
        stats = write_model(model, model_path, data_name=data_file, link_weights=link_weights, progress=progress,
                            observer=observer)
    except OSError as exc:
        from mha2sha.outputs import disk_full

        raise disk_full(exc, staged.out_dir) or OutputError(staged.out_dir, f"cannot write the model: {exc.strerror or exc}") from None
    return model_file, stats
