"""Changes to the MHA model that come before the split: ``--ar-tokens`` (rebuild a cached
decoder for another number of tokens per step) and ``--lora-alpha-from-input`` (every LoRA
alpha becomes a graph input).

Both change the function the MHA model computes (other input shapes, a new input), so the
split and its verification must start from the changed model, not from the file the user
gave. The changed model is written to ``OUTDIR/prepared/<stem>.onnx`` (with the encodings
renamed onto it, when the rename changed anything, and ``prequant_encodings_map.json``), and
the conversion proceeds from it: the SHA model is verified against this prepared MHA model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mha2sha.errors import InputError
from mha2sha.graph.io import (
    EXTERNAL_DATA_THRESHOLD,
    StagedOutput,
    load_model,
    prepare_output_dir,
    save_model,
)

log = logging.getLogger("mha2sha")

PREPARED_DIR = "prepared"


@dataclass
class Prepared:
    model_path: Path
    encodings_path: Path | None
    summary: dict = field(default_factory=dict)  # goes into the report as "prepared"


def prepare_input(model_path: Path, output_dir: Path, *, encodings=None, encodings_path: Path | None = None,
                  ar_tokens: int | None = None, ar_context: int | None = None, lora_alpha_from_input: bool = False,
                  allow_hard_links: bool = False, encodings_version: str | None = None) -> Prepared:
    """Apply the pre-split changes to the model at ``model_path`` and write the result into
    ``output_dir/prepared/``. Raises (nothing written) when a change is refused."""
    from mha2sha.ar_tokens import TokensError, rebuild_for_tokens
    from mha2sha.prequant import PREQUANT_MAP_FILE, adapt, rename_encodings, write_mapping

    loaded = load_model(model_path, allow_hard_links=allow_hard_links)
    model = loaded.model
    summary: dict = {"source": str(model_path)}
    if ar_tokens is not None:
        try:
            rebuilt = rebuild_for_tokens(model, ar_tokens, ar_context)
        except TokensError as exc:
            raise InputError(model_path, f"--ar-tokens {ar_tokens}: {exc}") from None
        summary["ar_tokens"] = {
            "tokens": {"from": rebuilt.tokens_before, "to": rebuilt.tokens},
            "past": {"from": rebuilt.past_before, "to": rebuilt.past},
            "context": rebuilt.context,
            "constants_rebuilt": list(rebuilt.data_constants),
            "notes": list(rebuilt.notes),
            "inputs": {k: {"from": list(a), "to": list(b)} for k, (a, b) in rebuilt.inputs.items()},
            "outputs": {k: {"from": list(a), "to": list(b)} for k, (a, b) in rebuilt.outputs.items()},
        }
        log.info("rebuilt for %d tokens per step: %d inputs and %d outputs change shape", ar_tokens, len(rebuilt.inputs), len(rebuilt.outputs))
    mapping: dict[str, list[str]] = {}
    if lora_alpha_from_input:
        adapted = adapt(model, lora_alpha_from_input=True)
        mapping = adapted.mapping
        summary["lora_alpha_inputs"] = {k: v.tolist() for k, v in adapted.alpha_inputs.items()}
        summary["notes"] = list(adapted.notes)
        if not adapted.alpha_inputs:
            log.info("--lora-alpha-from-input: no constant LoRA alpha found (already inputs, or no LoRA branch)")
    if ar_tokens is None and not mapping:
        summary["changed"] = False  # nothing to lift: convert the model as given, write no copy
        return Prepared(model_path, encodings_path, summary)
    summary["changed"] = True
    stem = model_path.name[:-5] if model_path.name.endswith(".onnx") else model_path.stem
    inputs = [model_path] + ([encodings_path] if encodings_path else [])
    out_dir = prepare_output_dir(output_dir, inputs) / PREPARED_DIR
    out_dir.mkdir(exist_ok=True)
    staged = StagedOutput(out_dir, inputs)
    try:
        model_file, _ = save_model(model, staged, stem, external=loaded.external or loaded.weight_bytes > EXTERNAL_DATA_THRESHOLD)
        if mapping:
            write_mapping(staged.path(PREQUANT_MAP_FILE), mapping)
        enc_file = None
        if encodings is not None and mapping:
            from mha2sha.encodings import write_encodings

            renamed = encodings.clone()
            summary["encodings_renamed"] = rename_encodings(renamed, mapping, model)
            enc_file = f"{stem}.encodings"
            write_encodings(renamed, staged.path(enc_file), version=encodings_version)
        placed = staged.commit(last=model_file)
    except BaseException:
        staged.discard()
        raise
    summary["model"] = str(placed[model_file])
    if mapping:
        summary["prequant_map"] = str(placed[PREQUANT_MAP_FILE])
    new_enc = placed.get(enc_file) if enc_file else encodings_path
    return Prepared(placed[model_file], new_enc, summary)
