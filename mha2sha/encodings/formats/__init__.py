"""The file formats, one module per AIMET version; this module dispatches on the version.

``parse(doc)`` turns a JSON object into an EncodingSet; ``render(enc_set, version, view)``
turns one back into a JSON object of any version, with notes on what a conversion changed.
Both raise ``Problem`` (the caller adds the file's path)."""

from __future__ import annotations

from mha2sha.encodings.errors import Problem
from mha2sha.encodings.formats import v0_6_1, v1_0_0, v2_0_0
from mha2sha.encodings.formats._render import RenderContext, family
from mha2sha.encodings.model import EncodingSet
from mha2sha.encodings.stream import Members

VERSIONS = ("0.6.1", "1.0.0", "2.0.0", "2.1.0")
_SECTION_KEYS = {"0.6.1": tuple(v0_6_1.SECTIONS), "1.0.0": tuple(v1_0_0.SECTIONS), "2": ("encodings",)}
_TOP_TYPES = {"quantizer_args": dict, "excluded_layers": list, "producer": dict}


def section_keys(version: str) -> tuple[str, ...]:
    return _SECTION_KEYS[family(version)]


def parse(doc) -> EncodingSet:
    """An EncodingSet from a loaded JSON object."""
    if not isinstance(doc, dict):
        raise Problem(f"not an AIMET encodings file: a JSON object is expected, got {type(doc).__name__}")
    _check_version(doc)
    return parse_items(doc.items())


def parse_items(items) -> EncodingSet:
    """An EncodingSet from the top-level pairs of a file in file order, as
    ``stream.top_level`` yields them (a section may come as ``Members``, read as it is
    parsed) or as ``dict.items()`` gives them. Each section is parsed as it comes, by the
    file's version or, when "version" comes later in the file, by the section's shape (an
    object: 0.6.1, a list: 1.0.0, ``encodings``: 2.x), checked against the version at the end."""
    tensors: dict = {}
    plain: dict = {}  # every other top-level key, and sections that are not containers
    parsed: dict[str, str] = {}  # section key -> the version family it was parsed as
    version = None
    order = []
    for key, value in items:
        if key is None:
            raise Problem(f"not an AIMET encodings file: a JSON object is expected, got {type(value).__name__}")
        order.append(key)
        if key == "version":
            version = value
        members = _as_members(key, value)
        if members is None:
            plain[key] = value
            continue
        known = version if isinstance(version, str) and version in VERSIONS else None
        fam = _family_of(key, members.kind, known)
        if fam is None:  # not a section of this version, or of the wrong shape: judged below
            plain[key] = dict(members) if members.kind == "object" else [v for _, v in members]
            continue
        parsed[key] = fam
        if fam == "0.6.1":
            v0_6_1.parse_section(key, members, tensors)
        elif fam == "1.0.0":
            v1_0_0.parse_section(key, members, tensors)
        else:
            v2_0_0.parse_section(members, known or "2.0.0", tensors)
    doc = {"version": version, **plain} if version is not None else plain
    _check_version(doc)
    version = doc["version"]
    for key, kind in _TOP_TYPES.items():
        if key in plain and not isinstance(plain[key], kind):
            raise Problem(f"{key!r} must be a{'n object' if kind is dict else ' list'}, got {type(plain[key]).__name__}")
    fam = family(version)
    for key, parsed_as in parsed.items():
        if parsed_as != fam:
            raise Problem(_wrong_section(key, version))
    for key in section_keys(version):
        if key in plain:
            raise Problem(_wrong_section(key, version))
    if fam == "2":
        if "encodings" not in parsed:
            raise Problem("the file: missing field 'encodings'")
        for enc in tensors.values():
            enc.style["version"] = version
    top = {k: v for k, v in plain.items() if k != "version"}
    return EncodingSet(version, tensors, top, key_order=tuple(order))


def _check_version(doc: dict) -> None:
    if "version" not in doc:
        raise Problem("no 'version' field (AIMET encodings carry one: " + ", ".join(VERSIONS) + ")")
    version = doc["version"]
    if not isinstance(version, str) or version not in VERSIONS:
        raise Problem(f"unknown encodings version {version!r} (supported: {', '.join(VERSIONS)})")


SECTIONS = ("activation_encodings", "param_encodings", "encodings")  # of every version


def _as_members(key: str, value) -> Members | None:
    if key not in SECTIONS:
        return None
    if isinstance(value, Members):
        return value
    if isinstance(value, dict):
        return Members("object", iter(value.items()))
    if isinstance(value, list):
        return Members("array", enumerate(value))
    return None


def _family_of(key: str, kind: str, version: str | None) -> str | None:
    if version is not None:
        fam = family(version)
        if key not in section_keys(version):
            return None
        return fam if kind == _SECTION_KIND[fam] else None
    if key == "encodings":
        return "2" if kind == "array" else None
    return "0.6.1" if kind == "object" else "1.0.0"


_SECTION_KIND = {"0.6.1": "object", "1.0.0": "array", "2": "array"}


def _wrong_section(key: str, version: str) -> str:
    fam = family(version)
    if key not in section_keys(version):
        return f"{key!r} is not a section of version {version} (sections: {', '.join(section_keys(version))})"
    if fam == "0.6.1":
        return f"{key!r} must be an object mapping tensor names to lists of encodings (0.6.1)"
    if fam == "1.0.0":
        return f"{key!r} must be a list of encodings with \"name\" (1.0.0)"
    return f"'encodings' must be a list of encodings ({version})"


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
