"""What every version's writer shares: the target, an optional model for what the internal
form does not know (axes, activation vs param), notes on what a conversion changed, and the
rules for spelling numbers and flags.

An entry read from a file of the target's version family is written exactly as it was read
(its ``style``: literal spellings, omitted fields, the numbers as they were). An entry from
another version is written in the target's canonical spelling, as aimet-onnx writes it."""

from __future__ import annotations

from dataclasses import dataclass, field

from mha2sha.encodings.errors import Problem
from mha2sha.encodings.layout import ModelView
from mha2sha.encodings.model import BLOCKED, TensorEncoding


def family(version: str | None) -> str | None:
    """2.0.0 and 2.1.0 write entries the same way (2.1.0 adds the LPBQ meta form)."""
    if version is None:
        return None
    return "2" if version.startswith("2.") else version


@dataclass
class RenderContext:
    version: str
    view: ModelView | None = None
    notes: list[str] = field(default_factory=list)

    def same_style(self, enc: TensorEncoding) -> bool:
        return family(enc.style.get("version")) == family(self.version)

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def literal(self, enc: TensorEncoding, key: str, value, canonical, parse=None):
        """The source's spelling of a field when it still says ``value``, else ``canonical``."""
        if self.same_style(enc):
            literals = enc.style.get("literals", {})
            if key in literals and (parse or (lambda v: v))(literals[key]) == value:
                return literals[key]
        return canonical

    def omitted(self, enc: TensorEncoding, key: str) -> bool:
        """True when the source omitted ``key`` and the entry is written in its version."""
        return self.same_style(enc) and key in enc.style.get("absent", ())

    def section_of(self, name: str, enc: TensorEncoding) -> str:
        """activation or param: as the source said, else by the model, else by the entry
        (2.x has no split: signed, per-channel and blocked entries are parameters)."""
        if enc.section in ("activation", "param"):
            return enc.section
        if self.view is not None and name in self.view:
            return "param" if self.view.is_param(name) else "activation"
        self.note(
            f"{self.version} splits activations from parameters and the input did not: entries "
            "absent from the model were placed by their encoding (signed or per-channel: param)"
        )
        return "param" if (enc.signed or enc.kind in ("per_channel", *BLOCKED)) else "activation"

    def signed(self, name: str, enc: TensorEncoding) -> bool:
        """2.x output_dtype signedness: as read, else aimet-onnx's rule (weights signed,
        activations unsigned)."""
        if enc.signed is not None:
            return enc.signed
        return self.section_of(name, enc) == "param"


def as_int_if_integral(value):
    """Offsets and zero points are integers in 1.0.0 / 2.x; 0.6.1 writes them as floats."""
    f = float(value)
    return int(f) if f.is_integer() else f


KIND_LABELS = {"float": "a float", "per_tensor": "a per-tensor", "per_channel": "a per-channel",
               "per_block": "a per-block", "lpbq": "an LPBQ"}


def unrepresentable(name: str, what: str, version: str, hint: str) -> Problem:
    return Problem(f"cannot write {version}: {name!r} is {what}; {hint}")
