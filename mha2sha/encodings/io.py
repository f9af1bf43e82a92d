"""Reading and writing encodings files: JSON in, one EncodingSet out; atomic writes."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from mha2sha.encodings import formats, stream
from mha2sha.encodings.errors import EncodingsError, Problem
from mha2sha.encodings.formats._render import RenderContext
from mha2sha.encodings.layout import as_view, bind
from mha2sha.encodings.model import EncodingSet


def read_encodings(path_or_obj) -> EncodingSet:
    """Read an AIMET encodings file (0.6.1, 1.0.0, 2.0.0, 2.1.0), or an already loaded JSON
    object, into one EncodingSet. A file is read entry by entry in bounded memory (see
    stream.py). Raises EncodingsError("<path>: <problem>")."""
    if not isinstance(path_or_obj, (str, os.PathLike)):
        try:
            return formats.parse(path_or_obj)
        except Problem as exc:
            raise EncodingsError(None, str(exc)) from None
    path = str(path_or_obj)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise EncodingsError(path, "encodings file not found") from None
    except OSError as exc:
        raise EncodingsError(path, f"cannot read the encodings file ({exc.strerror or exc})") from None
    with fh:
        reader = stream.Reader(fh)
        try:
            enc_set = formats.parse_items(stream.top_level(reader, formats.SECTIONS))
        except Problem as exc:
            raise EncodingsError(path, str(exc)) from None
        except stream.JsonError as exc:
            raise EncodingsError(path, f"not valid JSON ({exc})") from None
        except stream.DuplicateKey as exc:
            raise EncodingsError(path, f"key {exc.args[0]!r} appears twice in one object (JSON would keep only the last value)") from None
        except OSError as exc:
            raise EncodingsError(path, f"cannot read the encodings file ({exc.strerror or exc})") from None
    enc_set.source = path
    return enc_set


def to_object(enc_set: EncodingSet, *, version: str | None = None, model=None, notes: list[str] | None = None) -> dict:
    """The JSON object of ``enc_set`` in ``version`` (default: the version it was read in).

    Converting needs what the target stores and the source did not: 2.x stores axes and
    nests per-block scales in the tensor layout, 1.x splits activations from params; pass
    ``model`` (onnx.ModelProto or onnx_ir.Model) to take them from the model. What a
    conversion changed or dropped is appended to ``notes``. Raises EncodingsError for what
    the target cannot represent (per-block or LPBQ in 0.6.1, ...)."""
    version = version or enc_set.version
    view = as_view(model) if model is not None else None
    if view is not None and version != enc_set.version:
        enc_set = enc_set.clone()
        bind(enc_set, view)
    ctx = RenderContext(version, view)
    try:
        obj = formats.render(enc_set, version, ctx)
    except Problem as exc:
        raise EncodingsError(enc_set.source, str(exc)) from None
    if notes is not None:
        notes.extend(ctx.notes)
    return obj


def write_encodings(enc_set: EncodingSet, path, *, version: str | None = None, model=None) -> list[str]:
    """Write ``enc_set`` to ``path`` in ``version`` (default: the version it was read in) and
    return the conversion notes (see to_object). The file appears complete or not at all:
    it is written to a temporary file in the same folder and renamed over ``path``."""
    notes: list[str] = []
    obj = to_object(enc_set, version=version, model=model, notes=notes)
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # open(): the umask's mode, not mkstemp's 0600
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return notes
