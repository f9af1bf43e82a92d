"""Preset regression harness: every preset's model converts, equals its oracle, verifies with
encodings through `--base-llm <preset>`, and has exactly the pinned structure.

Pins are rewritten for review with ``python -m tests.presets.update`` (docs/presets.md).
"""

from __future__ import annotations

import pytest
import yaml

from mha2sha.compat import PRESETS
from tests.presets.harness import (
    dump_yaml,
    load_preset,
    load_presets,
    preset_files,
    render,
    run_case,
    structure_diff,
)

ALL = load_presets()
REQUIRED = {"llama2", "llama2_lora", "llama3", "gpt2", "sd_2.1", "sd_2.1_lora", "qwen2", "qwen3", "mistral", "phi3", "bert", "t5"}


def _params():
    out = []
    for preset in ALL:
        for case in preset.cases:
            marks = [pytest.mark.exporters] if case == "export" else []
            reason = preset.case_spec(case).get("known_failure")
            if reason:
                marks.append(pytest.mark.xfail(strict=True, reason=f"known failure (in {preset.path.name}): {reason}"))
            out.append(pytest.param(preset, case, id=f"{preset.name}-{case}", marks=marks))
    return out


@pytest.mark.parametrize(("preset", "case"), _params())
def test_preset(preset, case, tmp_path):
    result = run_case(preset, case, tmp_path)
    pinned = preset.pinned.get(case)
    if pinned is None:
        pytest.fail(f"{preset.path.name} has no pinned structure for {case!r}: run `python -m tests.presets.update {preset.name}` "
                    f"and review the diff.\nFound:\n{dump_yaml(result.structure)}")
    pinned = dict(pinned)
    exported_with = pinned.pop("exported_with", None)
    found = yaml.safe_load(dump_yaml(result.structure))
    if found != pinned:
        hint = ""
        if exported_with and exported_with != result.versions:
            hint = (f"\nNote: pinned with {exported_with}, exported now with {result.versions}: the exporter's graph may "
                    "have changed rather than the converter.")
        pytest.fail(f"{preset.name}/{case}: the converted structure differs from the pinned one in {preset.path.name} "
                    f"(-pinned +found):\n{structure_diff(pinned, found)}{hint}\n"
                    f"If the change is intended: python -m tests.presets.update {preset.name} --case {case}; review and commit the diff.",
                    pytrace=False)


def test_the_required_families_and_every_base_llm_preset_have_a_preset_file():
    names = {p.name for p in ALL}
    assert REQUIRED <= names, sorted(REQUIRED - names)
    assert set(PRESETS) <= names, f"--base-llm presets without a preset file: {sorted(set(PRESETS) - names)}"
    for preset in ALL:
        if preset.name in PRESETS:
            assert preset.spec.get("converter", {}).get("base_llm") == preset.name, preset.path.name
        assert preset.cases, f"{preset.path.name} declares no case"


def test_preset_files_are_in_the_form_the_update_command_writes():
    for path in preset_files():
        preset = load_preset(path)
        assert path.read_text() == render(preset, preset.pinned), (
            f"{path.name}: the pinned section was edited by hand; run `python -m tests.presets.update {preset.name}`")


@pytest.mark.exporters
def test_external_data_export(tmp_path):
    """The llama3 export as torch.onnx (dynamo) writes it: weights in llama3.onnx.data."""
    from dataclasses import replace

    preset = next(p for p in ALL if p.name == "llama3")
    spec = dict(preset.spec, export=dict(preset.spec["export"], keep_external_data=True))
    run_case(replace(preset, spec=spec), "export", tmp_path)
