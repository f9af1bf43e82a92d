"""Encodings that belong to another model are refused, not half-applied.

An AIMET export names the tensors of the model it was made for. When more than
``FOREIGN_FRACTION`` of the file's names are not tensors of the model, or more than
``FOREIGN_FRACTION`` of the model's quantizable weights (float weights of MatMul / Gemm /
Conv) have no encoding in the file, the file is for another model (or another export of
it): the run stops with exit 2 and one line giving the counts and three example names.
Below that, the unmatched names are warnings listed in the report, and coverage is
reported against the whole file.
"""

from __future__ import annotations

FOREIGN_FRACTION = 0.10


def _examples(names) -> str:
    return ", ".join(repr(n) for n in sorted(names)[:3])


def foreign_encodings(file_names: set[str], model_names: set[str], quantizable: set[str] | None = None) -> str | None:
    """The one-line refusal, or None when the file belongs to the model."""
    if not file_names:
        return None
    unmatched = file_names - model_names
    if len(unmatched) > FOREIGN_FRACTION * len(file_names):
        return (f"the encodings do not belong to this model: {len(unmatched)} of {len(file_names)} encoded names are not "
                f"tensors of the model (more than {FOREIGN_FRACTION:.0%}), e.g. {_examples(unmatched)}")
    if quantizable:
        missing = quantizable - file_names
        if len(missing) > FOREIGN_FRACTION * len(quantizable):
            return (f"the encodings do not belong to this model: {len(missing)} of the model's {len(quantizable)} quantizable "
                    f"weights have no encoding (more than {FOREIGN_FRACTION:.0%}), e.g. {_examples(missing)}")
    return None
