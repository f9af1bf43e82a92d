"""Changes to the MHA model that come before the split: ``--ar-tokens`` (rebuild a cached
decoder for another number of tokens per step) and ``--lora-alpha-from-input`` (every LoRA
alpha becomes a graph input).

Both change the function the MHA model computes (other input shapes, a new input), so the
split and its verification start from the changed model, not from the file the user gave.
``prepare_model`` changes the loaded model in memory (the driver splits that same model);
``write_prepared`` stages it for the user as ``OUTDIR/prepared/<stem>.onnx`` (with the
encodings renamed onto it, when the rename changed anything, and ``prequant_encodings_map.json``),
in the run's one output transaction. The verifier, which runs the MHA model in worker
processes, reads the staged file: the SHA model is verified against this prepared MHA model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from mha2sha.errors import InputError

log = logging.getLogger("mha2sha")

PREPARED_DIR = "prepared"


@dataclass
class Prepared:
    """The MHA model after the pre-split changes (in memory)."""

    model: ir.Model
    encodings: object | None  # the EncodingSet renamed onto ``model`` (the given one when no name changed)
    mapping: dict[str, list[str]] = field(default_factory=dict)  # original name -> names in ``model``
    summary: dict = field(default_factory=dict)  # goes into the report as "prepared"

    @property
    def changed(self) -> bool:
        return bool(self.summary.get("changed"))


def prepare_model(model: ir.Model, model_path: Path, *, encodings=None, ar_tokens: int | None = None, ar_context: int | None = None,
                  lora_alpha_from_input: bool = False) -> Prepared:
    """Apply the pre-split changes to ``model`` in place (``model_path`` names it in messages
    and the summary). Raises InputError (nothing written) when a change is refused."""
    from mha2sha.ar_tokens import TokensError, rebuild_for_tokens
    from mha2sha.prequant import adapt, rename_encodings

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
    summary["changed"] = ar_tokens is not None or bool(mapping)  # otherwise: convert the model as given, write no copy
    renamed = encodings
    if encodings is not None and mapping:
        renamed = encodings.clone()
        summary["encodings_renamed"] = rename_encodings(renamed, mapping, model)
    return Prepared(model, renamed, mapping, summary)


def write_prepared(prepared: Prepared, staged, stem: str, *, external: bool, encodings_version: str | None = None) -> str:
    """Stage ``prepared/<stem>.onnx`` (+ the mapping and the renamed encodings) in ``staged``
    (an OutputTransaction); returns the model's name inside the output folder. Adds the final
    paths to the summary."""
    from mha2sha.errors import OutputError
    from mha2sha.graph.writer import write_model
    from mha2sha.outputs import disk_full
    from mha2sha.prequant import PREQUANT_MAP_FILE, write_mapping

    model_file = f"{PREPARED_DIR}/{stem}.onnx"
    path = staged.path(model_file)
    data_name = None
    if external:
        data_name = f"{stem}.onnx.data"  # beside the model, in prepared/
        staged.path(f"{PREPARED_DIR}/{data_name}")
    try:
        write_model(prepared.model, path, data_name=data_name)
    except OSError as exc:
        raise disk_full(exc, staged.out_dir) or OutputError(staged.out_dir, f"cannot write the prepared model: {exc.strerror or exc}") from None
    prepared.summary["model"] = str(staged.final(model_file))
    if prepared.mapping:
        map_file = f"{PREPARED_DIR}/{PREQUANT_MAP_FILE}"
        write_mapping(staged.path(map_file), prepared.mapping)
        prepared.summary["prequant_map"] = str(staged.final(map_file))
        if prepared.encodings is not None:
            from mha2sha.encodings import write_encodings

            write_encodings(prepared.encodings, staged.path(f"{PREPARED_DIR}/{stem}.encodings"), version=encodings_version)
    return model_file
