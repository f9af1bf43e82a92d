"""Stream a model's weights to disk at copy speed.

Weights the conversion did not change still live in the input's data file; they are copied
file-to-file by the kernel (``os.copy_file_range``), consecutive ones in one call, never
through Python or numpy. New tensors (per-head slices) are computed one at a time and
written as they come, so memory does not grow with the model. With ``link_weights`` the
input data file is hard-linked into the output folder instead and unchanged weights keep
their offsets in it: only the new tensors are written.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir

from mha2sha.graph.ir_utils import in_memory

INLINE_BYTES = 1024  # tensors up to this size stay inside the .onnx file
_COPY_CHUNK = 1 << 30


@dataclass
class _Source:
    path: Path
    offset: int
    length: int


def _source_of(tensor) -> _Source | None:
    if isinstance(tensor, ir.ExternalTensor):
        return _Source(Path(tensor.path), tensor.offset or 0, tensor.length or tensor.nbytes)
    return None


class _Copier:
    """Coalesces consecutive source ranges into few kernel copies."""

    def __init__(self, out_fd: int):
        self.out_fd = out_fd
        self.pending: tuple[Path, int, int] | None = None  # path, start, length
        self.fds: dict[Path, int] = {}

    def add(self, src: _Source) -> None:
        if self.pending and self.pending[0] == src.path and self.pending[1] + self.pending[2] == src.offset:
            self.pending = (src.path, self.pending[1], self.pending[2] + src.length)
            return
        self.flush()
        self.pending = (src.path, src.offset, src.length)

    def flush(self) -> None:
        if not self.pending:
            return
        path, offset, length = self.pending
        self.pending = None
        fd = self.fds.get(path)
        if fd is None:
            fd = self.fds[path] = os.open(path, os.O_RDONLY)
        while length:
            try:
                n = os.copy_file_range(fd, self.out_fd, min(length, _COPY_CHUNK), offset)
            except OSError:
                n = 0
            if n <= 0:  # no kernel copy here (other file system, old kernel): read and write
                data = os.pread(fd, min(length, 1 << 26), offset)
                n = os.write(self.out_fd, data)
            offset += n
            length -= n

    def close(self) -> None:
        self.flush()
        for fd in self.fds.values():
            os.close(fd)


def write_model(model: ir.Model, model_path: Path, *, data_name: str | None, link_weights: bool = False, progress=None) -> dict:
    """Write ``model`` to ``model_path`` (+ ``data_name`` beside it). Returns statistics.

    ``data_name`` None keeps every tensor inside the .onnx file (small models).
    """
    graph = model.graph
    out_dir = model_path.parent
    stats = {"copied_bytes": 0, "written_bytes": 0, "linked_bytes": 0, "linked": False}
    originals: dict[str, object] = {}
    # Tensors stored inside the .onnx file must hold their values, not a reference to the
    # input's data file (small constants of an external-data input, or everything when the
    # output has no data file).
    inline = [v for v in graph.initializers.values()
              if isinstance(v.const_value, ir.ExternalTensor) and (data_name is None or v.const_value.nbytes <= INLINE_BYTES)]
    if data_name is None:
        with _inlined(inline):
            _serialize(model, model_path)
        return stats
    external = [v for v in graph.initializers.values() if v.const_value is not None and v.const_value.nbytes > INLINE_BYTES]
    link_target: Path | None = None
    linked_source: Path | None = None
    if link_weights:
        sources = {_source_of(v.const_value).path for v in external if _source_of(v.const_value) is not None}
        if len(sources) == 1:
            linked_source = next(iter(sources))
            link_target = out_dir / f"{data_name}.weights"
            if linked_source.stat().st_dev != out_dir.stat().st_dev:
                stats["link_error"] = "input and output are on different file systems: copying instead"
                link_target = linked_source = None
    data_path = out_dir / data_name
    fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    copier = _Copier(fd)
    position = 0
    try:
        for count, value in enumerate(external):
            tensor = value.const_value
            src = _source_of(tensor)
            if src is not None and linked_source is not None and src.path == linked_source:
                new = ir.ExternalTensor(link_target.name, src.offset, src.length, tensor.dtype, shape=tensor.shape, name=value.name, base_dir=str(out_dir))
                stats["linked_bytes"] += src.length
            else:
                if src is not None:
                    copier.add(src)
                    length = src.length
                    stats["copied_bytes"] += length
                else:
                    copier.flush()
                    data = tensor.tobytes()
                    length = len(data)
                    _write_all(fd, data)
                    stats["written_bytes"] += length
                new = ir.ExternalTensor(data_name, position, length, tensor.dtype, shape=tensor.shape, name=value.name, base_dir=str(out_dir))
                position += length
            originals[value.name] = tensor
            value.const_value = new
            if progress is not None:
                progress(count + 1, len(external))
        copier.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    if link_target is not None:
        # Linked last: new tensors were read from the source before it gained a second name.
        stats["linked"] = _clone_or_link(linked_source, link_target)
    try:
        with _inlined(inline):
            _serialize(model, model_path)
    finally:
        for value in external:
            value.const_value = originals.get(value.name, value.const_value)
    return stats


@contextlib.contextmanager
def _inlined(values: list[ir.Value]):
    """Within the block, ``values`` hold in-memory copies of their external tensors."""
    saved = [(v, v.const_value) for v in values]
    try:
        for v, tensor in saved:
            v.const_value = in_memory(tensor)
        yield
    finally:
        for v, tensor in saved:
            v.const_value = tensor


def _clone_or_link(source: Path, target: Path) -> str:
    """Share ``source``'s blocks under ``target``: a copy-on-write clone where the file system
    can (the result is an ordinary file), else a hard link (both names then count two links,
    which some readers refuse: see --allow-hard-links)."""
    import fcntl

    ficlone = 0x40049409  # FICLONE ioctl (btrfs, xfs, ...)
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            fcntl.ioctl(dst.fileno(), ficlone, src.fileno())
        return "clone"
    except OSError:
        target.unlink(missing_ok=True)
    os.link(source, target)
    return "hard link"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _serialize(model: ir.Model, path: Path) -> None:
    proto = ir.serde.serialize_model(model)
    with open(path, "wb") as fh:
        fh.write(proto.SerializeToString())
        fh.flush()
        os.fsync(fh.fileno())
