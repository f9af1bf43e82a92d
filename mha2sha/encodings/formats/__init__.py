"""The file formats, one module per AIMET version; this module dispatches on the version.

``parse(doc)`` turns a JSON object into an EncodingSet; ``render(enc_set, version, view)``
turns one back into a JSON object of any version, with notes on what a conversion changed.
Both raise ``Problem`` (the caller adds the file's path)."""

from __future__ import annotations

from mha2sha.encodings.errors import Problem
from mha2sha.encodings.formats import v0_6_1, v1_0_0, v2_0_0
from mha2sha.encodings.formats._render import RenderContext, family
from mha2sha.encodings.model import EncodingSet

VERSIONS = ("0.6.1", "1.0.0", "2.0.0", "2.1.0")
_SECTION_KEYS = {"0.6.1": tuple(v0_6_1.SECTIONS), "1.0.0": tuple(v1_0_0.SECTIONS), "2": ("encodings",)}
_TOP_TYPES = {"quantizer_args": dict, "excluded_layers": list, "producer": dict}


def section_keys(version: str) -> tuple[str, ...]:
    return _SECTION_KEYS[family(version)]


def parse(doc) -> EncodingSet:
    if not isinstance(doc, dict):
        raise Problem(f"not an AIMET encodings file: a JSON object is expected, got {type(doc).__name__}")
    if "version" not in doc:
        raise Problem("no 'version' field (AIMET encodings carry one: " + ", ".join(VERSIONS) + ")")
    version = doc["version"]
    if version not in VERSIONS:
        raise Problem(f"unknown encodings version {version!r} (supported: {', '.join(VERSIONS)})")
    for key, kind in _TOP_TYPES.items():
        if key in doc and not isinstance(doc[key], kind):
            raise Problem(f"{key!r} must be a{'n object' if kind is dict else ' list'}, got {type(doc[key]).__name__}")
    if version == "0.6.1":
        tensors = v0_6_1.parse(doc)
    elif version == "1.0.0":
        tensors = v1_0_0.parse(doc)
    else:
        tensors = v2_0_0.parse(doc, version)
    skipped = {"version", *section_keys(version)}
    top = {k: v for k, v in doc.items() if k not in skipped}
    return EncodingSet(version, tensors, top, key_order=tuple(doc))


def render(enc_set: EncodingSet, version: str, ctx: RenderContext) -> dict:
    if version not in VERSIONS:
        raise Problem(f"unknown encodings version {version!r} (supported: {', '.join(VERSIONS)})")
    _note_dropped_fields(enc_set, ctx)
    if version == "0.6.1":
        sections = v0_6_1.render_sections(enc_set.tensors, ctx)
    elif version == "1.0.0":
        sections = v1_0_0.render_sections(enc_set.tensors, ctx)
    else:
        sections = {"encodings": v2_0_0.render_entries(enc_set.tensors, ctx)}
    body = {"version": version, **sections, **enc_set.top}
    if enc_set.version == version and enc_set.key_order:
        # The source's key order (a section the source omitted and that stays empty is
        # left out, so that such a file reads back equal).
        order = [k for k in enc_set.key_order if k in body] + [k for k in body if k not in enc_set.key_order]
        return {k: body[k] for k in order if k in enc_set.key_order or body[k] != {} and body[k] != []}
    return body


def _note_dropped_fields(enc_set: EncodingSet, ctx: RenderContext) -> None:
    dropped = set()
    for enc in enc_set.tensors.values():
        if ctx.same_style(enc):
            continue
        dropped.update(enc.extras)
        for channel in enc.channel_extras or ():
            dropped.update(channel)
    if dropped:
        ctx.note(f"fields unknown to this tool are not carried into {ctx.version}: {', '.join(sorted(dropped))}")
