"""Write a model and its weights at disk speed, in memory that does not grow with the model.

The data file is planned first: every weight gets its offset before a byte is written, so
the .onnx file can be serialised while a thread streams the data (mha2sha.graph.datafile).
Weights come from three places:

- unchanged weights of the input's data file: read straight into the output buffer;
- weights derived from one input weight (per-head slices, mha2sha.graph.derived): grouped
  by source, the source is read once and every slice of it written in a row; a slice that
  is a contiguous byte range of its source (Conv-layout rows) is copied like an unchanged
  weight;
- everything else (sliced biases, new constants): from memory.

The data file follows the order of the input's data file, so reads are sequential. With
``link_weights`` the input data file is cloned (copy-on-write: btrfs, XFS, ...) into the output
folder and weights that are byte ranges of it (unchanged ones, contiguous slices) are
referenced there: only the other weights are written. Where the file system cannot clone,
the weights are copied as without the option. Never a hard link or a symlink: onnx and
onnxruntime refuse a data file with several links (a possible hard-link attack), and a
second name would make the input's own data file unloadable too.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from mha2sha.graph.datafile import DataFile
from mha2sha.graph.derived import (
    Composed,
    Derivation,
    LinearAsConv,
    Take,
    derivation_of,
    transposed,
)
from mha2sha.graph.ir_utils import in_memory

INLINE_BYTES = 1024  # tensors up to this size stay inside the .onnx file


@dataclass
class _Range:
    """Bytes ``[offset, offset + length)`` of a file."""

    path: Path
    offset: int
    length: int


@dataclass
class _Group:
    """Weights derived from one external source tensor, written one after the other."""

    source: ir.ExternalTensor
    items: list[tuple[ir.Value, Derivation, int]] = field(default_factory=list)  # value, derivation, length


@dataclass
class _Plan:
    """Each unit of work in data-file order, with the output offset it starts at."""

    units: list[tuple[int, object]] = field(default_factory=list)  # (offset, _Range | _Group | (value, tensor))
    size: int = 0
    references: dict[str, ir.ExternalTensor] = field(default_factory=dict)  # value name -> new tensor
    stats: dict = field(default_factory=dict)


def _range_of(tensor) -> _Range | None:
    """The byte range of the input file that holds ``tensor``'s bytes exactly, if there is one."""
    if isinstance(tensor, ir.ExternalTensor):
        return _Range(Path(tensor.path), tensor.offset or 0, tensor.length or tensor.nbytes)
    derivation = derivation_of(tensor)
    if isinstance(derivation, Take) and isinstance(derivation.source, ir.ExternalTensor):
        source = derivation.source
        shape = [int(d) for d in source.shape]
        itemsize = source.dtype.itemsize
        idx, axis = derivation.indices, derivation.axis
        contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
        if contiguous and itemsize >= 1 and int(np.prod(shape[:axis])) == 1:
            row = int(np.prod(shape[axis + 1:])) * int(itemsize)
            return _Range(Path(source.path), (source.offset or 0) + idx[0] * row, len(idx) * row)
    return None


def _plan(external: list[ir.Value], out_dir: Path, data_name: str, linked: tuple[Path, str] | None) -> _Plan:
    plan = _Plan(stats={"copied_bytes": 0, "written_bytes": 0, "linked_bytes": 0, "linked": False})
    by_source: list[tuple[tuple[str, int, int], object]] = []  # sort key, unit
    groups: dict[int, _Group] = {}
    in_memory_units: list[tuple[ir.Value, object]] = []
    for order, value in enumerate(external):
        tensor = value.const_value
        rng = _range_of(tensor)
        if rng is not None and linked is not None and rng.path == linked[0]:
            plan.references[value.name] = _reference(linked[1], rng.offset, rng.length, tensor, value.name, out_dir)
            plan.stats["linked_bytes"] += rng.length
            continue
        if rng is not None:
            by_source.append(((str(rng.path), rng.offset, order), (value, rng)))
            continue
        derivation = derivation_of(tensor)
        if derivation is not None and isinstance(derivation.source, ir.ExternalTensor) and derivation.source.dtype.itemsize >= 1:
            source = derivation.source
            group = groups.get(id(source))
            if group is None:
                group = groups[id(source)] = _Group(source)
                by_source.append(((str(source.path), source.offset or 0, order), group))
            group.items.append((value, derivation, tensor.nbytes))
            continue
        in_memory_units.append((value, tensor))
    by_source.sort(key=lambda entry: entry[0])
    position = 0

    def place(value: ir.Value, tensor, length: int) -> None:
        nonlocal position
        plan.references[value.name] = _reference(data_name, position, length, tensor, value.name, out_dir)
        position += length

    for _, unit in by_source:
        plan.units.append((position, unit if isinstance(unit, _Group) else unit[1]))
        if isinstance(unit, _Group):
            for value, _derivation, length in unit.items:
                place(value, value.const_value, length)
                plan.stats["written_bytes"] += length
        else:
            value, rng = unit
            place(value, value.const_value, rng.length)
            plan.stats["copied_bytes"] += rng.length
    for value, tensor in in_memory_units:
        plan.units.append((position, (value, tensor)))
        place(value, tensor, tensor.nbytes)
        plan.stats["written_bytes"] += tensor.nbytes
    plan.size = position
    return plan


def _reference(location: str, offset: int, length: int, like, name: str, out_dir: Path) -> ir.ExternalTensor:
    return ir.ExternalTensor(location, offset, length, like.dtype, shape=like.shape, name=name, base_dir=str(out_dir))


_WHOLE_SOURCE_BYTES = 16 << 20  # a transposed source read whole into the scratch buffer
_CHUNK_BYTES = 8 << 20  # transposed output written at a time
_BAND_BYTES = 4 << 20  # source rows mapped at a time while a chunk is transposed


def _read_into(fd: int, view: memoryview, offset: int, path) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            raise OSError(f"{path}: ended {len(view) - got} bytes early")
        got += n


def _conv_columns(derivation: Derivation, shape: list[int]) -> tuple[int, int] | None:
    """``(a, b)`` when ``derivation`` is ``source[:, a:b].T`` as a 1x1 Conv weight."""
    if len(shape) != 2:
        return None
    inner = None
    if isinstance(derivation, Composed):
        inner, derivation = derivation.inner, derivation.outer
    if not (isinstance(derivation, LinearAsConv) and derivation.transpose and derivation.alpha == 1.0):
        return None
    if inner is None:
        return 0, shape[1]
    if isinstance(inner, Take) and inner.axis in (1, -1) and inner.indices:
        first = inner.indices[0]
        if inner.indices == list(range(first, first + len(inner.indices))):
            return first, first + len(inner.indices)
    return None


class _Producer:
    """Fills the data file with the plan's units, in a thread of its own."""

    def __init__(self, plan: _Plan, data: DataFile):
        self.plan = plan
        self.data = data
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self._fds: dict[Path, int] = {}
        self._scratch = bytearray()
        self.thread = threading.Thread(target=self._run, name="mha2sha-weights", daemon=True)

    def _run(self) -> None:
        try:
            for offset, unit in self.plan.units:
                if self.cancelled.is_set():
                    return
                if self.data.position != offset:
                    raise RuntimeError(f"data file plan out of step at {offset} (at {self.data.position})")
                if isinstance(unit, _Range):
                    self.data.append_from(self._fd(unit.path), unit.offset, unit.length)
                elif isinstance(unit, _Group):
                    self._derive(unit)
                else:
                    value, tensor = unit
                    self._append(tensor.tobytes(), tensor.nbytes, value.name)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            self.error = exc
        finally:
            for fd in self._fds.values():
                os.close(fd)

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fd

    def _derive(self, group: _Group) -> None:
        """Read the source once (no memory map: its pages would stay resident), then write
        each derived weight."""
        source = group.source
        length = source.length or source.nbytes
        shape = [int(d) for d in source.shape]
        spans = [_conv_columns(derivation, shape) for _, derivation, _ in group.items]
        if spans and all(span is not None for span in spans) and source.dtype.itemsize >= 1:
            self._derive_transposed(group, spans, shape)
            return
        if len(self._scratch) < length:
            self._scratch = bytearray(length)
        view = memoryview(self._scratch)[:length]
        fd, start, got = self._fd(Path(source.path)), source.offset or 0, 0
        while got < length:
            n = os.preadv(fd, [view[got:]], start + got)
            if n <= 0:
                raise OSError(f"{source.path}: ended {length - got} bytes early")
            got += n
        dtype = np.dtype(source.dtype.numpy()).newbyteorder("<")
        array = np.frombuffer(view, dtype=dtype).reshape([int(d) for d in source.shape])
        for value, derivation, expected in group.items:
            derived = np.ascontiguousarray(derivation.derive(array))
            self._append(derived.view(np.uint8).reshape(-1), expected, value.name)

    def _derive_transposed(self, group: _Group, spans: list[tuple[int, int]], shape: list[int]) -> None:
        """Weights that are column blocks of the source, transposed (Conv layouts of a
        MatMul weight, per head or whole), written in chunks of output rows: never a whole
        transposed copy. A source up to _WHOLE_SOURCE_BYTES is read once whole; a larger
        one (MLP weights, an LM head) is mapped read-only and each chunk is transposed a
        band of source rows at a time, every band's pages dropped from this process once
        transposed (madvise DONTNEED: the page cache keeps them, the process's resident
        memory does not grow with the weight)."""
        source = group.source
        rows, cols = shape
        dtype = np.dtype(source.dtype.numpy()).newbyteorder("<")
        itemsize = dtype.itemsize
        fd, start = self._fd(Path(source.path)), source.offset or 0
        length = rows * cols * itemsize
        step = max(1, _CHUNK_BYTES // (rows * itemsize))
        if length <= _WHOLE_SOURCE_BYTES:
            if len(self._scratch) < length:
                self._scratch = bytearray(length)
            _read_into(fd, memoryview(self._scratch)[:length], start, source.path)
            array = np.frombuffer(memoryview(self._scratch)[:length], dtype=dtype).reshape(rows, cols)
            self._write_transposed(group, spans, step, lambda c0, c1: transposed(array[:, c0:c1]))
            return
        skip = start % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(fd, skip + length, offset=start - skip, access=mmap.ACCESS_READ) as mapped:
            array = np.frombuffer(mapped, dtype=dtype, count=rows * cols, offset=skip).reshape(rows, cols)
            band = max(1, _BAND_BYTES // (cols * itemsize))
            chunk = np.empty((step, rows), dtype=dtype)

            def part(c0: int, c1: int) -> np.ndarray:
                out = chunk[:c1 - c0]
                for r0 in range(0, rows, band):
                    r1 = min(rows, r0 + band)
                    transposed(array[r0:r1, c0:c1], out=out[:, r0:r1])
                    first = (skip + r0 * cols * itemsize) // mmap.PAGESIZE * mmap.PAGESIZE
                    mapped.madvise(mmap.MADV_DONTNEED, first, skip + r1 * cols * itemsize - first)
                return out

            try:
                self._write_transposed(group, spans, step, part)
            finally:
                del array  # the map closes only without views into it

    def _write_transposed(self, group: _Group, spans: list[tuple[int, int]], step: int, part) -> None:
        for (value, _derivation, expected), (first, end) in zip(group.items, spans):
            written = 0
            for c0 in range(first, end, step):
                chunk = part(c0, min(end, c0 + step))
                self.data.append(chunk.view(np.uint8).reshape(-1))
                written += chunk.nbytes
            if written != expected:
                raise RuntimeError(f"weight {value.name!r}: {written} bytes, planned {expected}")

    def _append(self, data, expected: int, name: str) -> None:
        if len(memoryview(data).cast("B")) != expected:
            raise RuntimeError(f"weight {name!r}: {len(data)} bytes, planned {expected}")
        self.data.append(data)


def write_model(model: ir.Model, model_path: Path, *, data_name: str | None, link_weights: bool = False, progress=None,
                observer=None) -> dict:
    """Write ``model`` to ``model_path`` (+ ``data_name`` beside it). Returns statistics.

    ``data_name`` None keeps every tensor inside the .onnx file (small models).
    ``observer`` (mha2sha.block_verification.BlockVerifier): ``observer.planned(model,
    data_path, aliases)`` is called once every weight of ``model`` references its planned
    place in the output (``aliases``: a file created at the end -> the file holding the same
    bytes now), then ``observer.written(n)`` as the first ``n`` bytes of the data file are
    on disk.
    """
    graph = model.graph
    out_dir = model_path.parent
    # Tensors stored inside the .onnx file must hold their values, not a reference to the
    # input's data file (small constants of an external-data input, or everything when the
    # output has no data file).
    inline = [v for v in graph.initializers.values()
              if isinstance(v.const_value, ir.ExternalTensor) and (data_name is None or v.const_value.nbytes <= INLINE_BYTES)]
    if data_name is None:
        with _inlined(inline):
            _serialize(model, model_path)
            if observer is not None:
                observer.planned(model, None, {})
        return {"copied_bytes": 0, "written_bytes": 0, "linked_bytes": 0, "linked": False}
    external = [v for v in graph.initializers.values() if v.const_value is not None and v.const_value.nbytes > INLINE_BYTES]
    linked, link_error = _link_source(external, out_dir, data_name) if link_weights else (None, None)
    plan = _plan(external, out_dir, data_name, linked)
    if link_error:
        plan.stats["link_error"] = link_error
    started = time.perf_counter()
    data = DataFile(out_dir / data_name)
    plan.stats["direct_io"] = data.direct
    producer = _Producer(plan, data)
    producer.thread.start()
    originals = {value.name: value.const_value for value in external}
    try:
        # The .onnx file is serialised while the weights stream (its references are planned).
        for value in external:
            value.const_value = plan.references[value.name]
        with _inlined(inline):
            _serialize(model, model_path)
            if observer is not None:
                aliases = {str(out_dir / linked[1]): str(linked[0])} if linked is not None else {}
                observer.planned(model, out_dir / data_name, aliases)
        while producer.thread.is_alive():
            producer.thread.join(0.1 if observer is not None else 0.25)
            if progress is not None:
                progress(min(data.written, plan.size) >> 20, plan.size >> 20)
            if observer is not None:
                observer.written(data.written)
        if producer.error is not None:
            raise producer.error
        data.close()
        if observer is not None:
            observer.written(plan.size)
    except BaseException:
        producer.cancelled.set()
        producer.thread.join()
        data.abort()
        for value in external:
            value.const_value = originals[value.name]
        raise
    plan.stats["data_seconds"] = round(time.perf_counter() - started, 3)
    if linked is not None:
        plan.stats["linked"] = "clone"
    for value in external:
        value.const_value = originals[value.name]
    if progress is not None:
        progress(plan.size >> 20, plan.size >> 20)
    return plan.stats


def _link_source(external: list[ir.Value], out_dir: Path, data_name: str) -> tuple[tuple[Path, str] | None, str | None]:
    """The input data file to clone or link (the one source of every external weight)."""
    sources = {rng.path for rng in (_range_of(v.const_value) for v in external) if rng is not None}
    sources |= {Path(d.source.path) for d in (derivation_of(v.const_value) for v in external)
                if d is not None and isinstance(d.source, ir.ExternalTensor)}
    if len(sources) != 1:
        return None, None
    source = next(iter(sources))
    if source.stat().st_dev != out_dir.stat().st_dev:
        return None, "input and output are on different file systems: copying instead"
    target = f"{data_name}.weights"
    # Cloned first, so the plan knows whether it can reference the clone.
    if not _clone(source, out_dir / target):
        return None, "the file system cannot clone files (copy-on-write): copying instead"
    return (source, target), None


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


def _clone(source: Path, target: Path) -> bool:
    """Share ``source``'s blocks under ``target`` as a copy-on-write clone, an ordinary file
    with one link that onnx and onnxruntime load like any other. False where the file system
    cannot clone (ext4, tmpfs, ...); nothing is left behind then."""
    import fcntl

    ficlone = 0x40049409  # FICLONE ioctl (btrfs, xfs, ...)
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            fcntl.ioctl(dst.fileno(), ficlone, src.fileno())
        return True
    except OSError:
        target.unlink(missing_ok=True)
        return False


def _serialize(model: ir.Model, path: Path) -> None:
    proto = ir.serde.serialize_model(model)
    with open(path, "wb") as fh:
        fh.write(proto.SerializeToString())
        fh.flush()
        os.fsync(fh.fileno())
