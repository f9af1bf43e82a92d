"""The reference tool's flags that state what a model contains, checked against the blocks found.

Our converter finds attention by structure, so these flags switch nothing on; each is an
expectation, and a mismatch is advice with the flag that gives the preset's form (only the
strict RoPE check fails a run). Used by mha2sha.api (the report) and mha2sha.compat (the
flags and presets).
"""

from __future__ import annotations

import logging

log = logging.getLogger("mha2sha")

# Flags that state what the model contains: flag -> what is checked.
EXPECTATIONS = {
    "handle_rope_ops": "RoPE on the query path",
    "handle_past_key_value": "past key/value inputs",
    "gqa_model": "grouped-query attention (fewer kv heads than heads)",
    "handle_alibi": "a per-head bias on the scores (ALiBi)",
    "handle_internal_rmsnorm": "a per-head q/k norm",
    "lora_model": "LoRA adaptors on the projections",
    "mha_conv": "Conv projections (AIMET-prepared model)",
    "nchw_aligned": "NCHW-aligned [B, E, 1, S] activations (AIMET-prepared model)",
}

# What to tell the user when an expectation is not met: the flag of this tool that gives the
# preset's form, or why nothing needs adding (the converter finds the structure either way).
_REMEDIES = {
    "handle_rope_ops": "nothing to add, the blocks convert without RoPE (--strict makes this an error)",
    "handle_past_key_value": "export the decode graph (past_key_values inputs, use_cache=True) for cache inputs; this graph converts as it is",
    "gqa_model": "nothing to add, the blocks convert as multi-head attention",
    "handle_alibi": "nothing to add, the blocks convert without a per-head bias",
    "handle_internal_rmsnorm": "nothing to add, the blocks convert without q/k norm",
    "lora_model": "nothing to add, the blocks convert without adaptors",
    "mha_conv": "add --replace-linear-with-conv",
    "nchw_aligned": "no flag changes the activation layout (AIMET's model preparation does); the conversion does not need it",
}

# RoPE forms the converter recognises exactly; "rotary (other form)" is a guess from the ops.
RECOGNISED_ROPE = {"RotaryEmbedding op", "rotate-half", "half-split"}


def found_features(blocks, replace_linear_with_conv: bool = False) -> dict[str, bool]:
    """What the converted model contains, keyed like EXPECTATIONS."""
    conv = [b for b in blocks if b.converted]
    conv_projections = any(b.features.get("projection") == "Conv" for b in conv)
    return {
        "handle_rope_ops": any(b.features.get("rope", "none") != "none" for b in conv),
        "handle_past_key_value": any(b.features.get("past_kv", "none") != "none" for b in conv),
        "gqa_model": any(b.kv_heads is not None and b.heads is not None and b.kv_heads < b.heads for b in conv),
        "handle_alibi": any(b.features.get("mask", "").startswith("per-head") for b in conv),
        "handle_internal_rmsnorm": any(b.features.get("qk_norm") == "yes" for b in conv),
        "lora_model": any(b.features.get("lora") == "yes" for b in conv),
        # --replace-linear-with-conv gives the output the Conv projections the flag expects.
        "mha_conv": conv_projections or (replace_linear_with_conv and bool(conv)),
        # Conv projections read [B, E, 1, S] activations: that is what an NCHW-aligned model is.
        "nchw_aligned": conv_projections,
    }


def _what_the_model_has(name: str, blocks) -> str:
    conv = [b for b in blocks if b.converted]
    if name in ("mha_conv", "nchw_aligned"):
        ops = sorted({b.features.get("projection", "none") for b in conv}) or ["no"]
        return f"{'/'.join(ops)} projections" + (" on [B, S, E] activations" if name == "nchw_aligned" else "")
    if name == "gqa_model":
        pairs = sorted({(b.kv_heads, b.heads) for b in conv if b.heads})
        return ", ".join(f"{kv} kv heads for {h} heads" for kv, h in pairs) or "no converted block"
    return "none"


def _strict_rope_failures(blocks) -> list[str]:
    """Converted blocks whose RoPE is missing or not in a recognised form (the --strict check)."""
    return [f"{b.name} ({b.features.get('rope', 'none')})" for b in blocks
            if b.converted and b.features.get("rope", "none") not in RECOGNISED_ROPE]


def check_expectations(flags, blocks) -> list[dict]:
    """One entry per expectation the flags state: found or not, and the one-line hint.

    ``flags``: mha2sha.compat.ReferenceFlags (or anything with those attributes). Only the
    strict RoPE check fails the run (``fails_run``); the rest is advice."""
    found = found_features(blocks, flags.replace_linear_with_conv)
    out = []
    for name, what in EXPECTATIONS.items():
        if not getattr(flags, name):
            continue
        flag = f"--{name.replace('_', '-')}"
        who = flags.base_llm if flags.base_llm and name not in flags.explicit else flag
        entry = {"flag": flag, "expects": what, "found": found[name], "fails_run": False}
        if name == "handle_rope_ops" and flags.strict:
            bad = _strict_rope_failures(blocks)
            entry["found"] = found[name] and not bad
            if bad:
                entry["fails_run"] = True
                entry["hint"] = (f"{who} expects {what} in a recognised form (--strict); "
                                 f"blocks without it: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}: drop --strict (--not-strict) to convert them as they are")
        elif not found[name]:
            entry["hint"] = f"{who} expects {what}; this model has {_what_the_model_has(name, blocks)}: {_REMEDIES[name]}"
        if "hint" in entry:  # the console shows it in the verdict table; the log keeps it too
            log.debug("%s", entry["hint"])
        out.append(entry)
    return out
