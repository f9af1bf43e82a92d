"""Turn freely drawn AttentionConfig fields into a consistent configuration, respecting pins.

The hypothesis strategies draw every axis independently; some combinations do not describe
a model (AttentionConfig.validate says which and why). Each rule below names such a
combination and the ways to resolve it, in order of preference; the first way that changes
no field the caller pinned is applied. So ``attention_configs(rope="rotate_half")`` turns a
drawn cross-attention off instead of dropping the pinned RoPE, and nothing is filtered away.
"""

from __future__ import annotations

from collections.abc import Callable

Fields = dict
Fix = dict  # field -> value (a callable takes the fields and returns the value)


class PinConflict(ValueError):
    """The pinned fields themselves do not describe a consistent model."""


def _group(c: Fields) -> int:
    return c["heads"] // c["kv_heads"]


def _has_past(c: Fields) -> bool:
    return c["past_kv"] != "none"


RT = "reshape_transpose"
NO_PAST = {"past_kv": "none", "past": 0}
RULES: list[tuple[str, Callable[[Fields], bool], list[Fix]]] = [
    ("past length needs a past_kv form", lambda c: c["past"] > 0 and not _has_past(c), [{"past": 0}, {"past_kv": "full"}]),
    ("a past_kv form needs a past length", lambda c: _has_past(c) and c["past"] == 0, [{"past": 1}, NO_PAST]),
    ("RoPE is not used with cross-attention", lambda c: c["rope"] != "none" and c["cross_attention"],
     [{"cross_attention": False}, {"rope": "none"}]),
    ("past KV is for self-attention", lambda c: _has_past(c) and c["cross_attention"], [{"cross_attention": False}, NO_PAST]),
    ("cross-attention takes no causal mask", lambda c: c["cross_attention"] and c["mask"] not in ("none", "additive_input", "bool_input", "padding_input"),
     [{"cross_attention": False}, {"mask": "none"}]),
    ("fused QKV reads one input", lambda c: c["fused_qkv"] != "none" and c["cross_attention"],
     [{"fused_qkv": "none"}, {"cross_attention": False}]),
    ("fused QKV is built for the linear layout", lambda c: c["fused_qkv"] != "none" and c["layout"] != "linear",
     [{"fused_qkv": "none"}, {"layout": "linear"}]),
    ("joint attention is bidirectional over both streams, without a cache",
     lambda c: c.get("joint_attention") and (c["cross_attention"] or _has_past(c) or c["mask"] != "none"),
     [{"joint_attention": False}, {"cross_attention": False, **NO_PAST, "mask": "none"}]),
    ("joint attention is built with plain projections",
     lambda c: c.get("joint_attention") and (c["layout"] != "linear" or c["fused_qkv"] != "none" or c["head_split"] != RT),
     [{"joint_attention": False}, {"layout": "linear", "fused_qkv": "none", "head_split": RT}]),
    ("joint attention is built without RoPE, q/k norm, LoRA, Attention op, probabilities view or biases",
     lambda c: c.get("joint_attention") and (c["rope"] != "none" or c["qk_norm"] or c["lora_rank"] or c["attention_op"] or c.get("probs_view") or c["alibi"] or c["relative_bias"]),
     [{"joint_attention": False}, {"rope": "none", "qk_norm": False, "qk_norm_full": False, "lora_rank": 0, "attention_op": False, "probs_view": False, "alibi": False, "relative_bias": False}]),
    ("the grouped fused layout is not a Tile repeat", lambda c: c["fused_qkv"] == "grouped" and c["gqa_repeat"] == "tile" and _group(c) > 1,
     [{"gqa_repeat": "expand"}, {"fused_qkv": "split"}]),
    ("the broadcast MQA form has one kv head", lambda c: c["gqa_repeat"] == "mqa_broadcast" and c["kv_heads"] != 1,
     [{"gqa_repeat": "expand"}, {"kv_heads": 1}]),
    ("the probabilities view folds plain heads", lambda c: c.get("probs_view") and c["head_split"] != RT, [{"probs_view": False}, {"head_split": RT}]),
    ("the probabilities view is built for the linear layout", lambda c: c.get("probs_view") and c["layout"] != "linear", [{"probs_view": False}, {"layout": "linear"}]),
    ("the probabilities view needs a Softmax core", lambda c: c.get("probs_view") and c["attention_op"], [{"probs_view": False}, {"attention_op": False}]),
    ("the probabilities view folds repeated kv heads", lambda c: c.get("probs_view") and c["gqa_repeat"] in ("broadcast", "mqa_broadcast") and _group(c) > 1,
     [{"probs_view": False}, {"gqa_repeat": "expand"}]),
    ("qk_norm_full is a form of qk_norm", lambda c: c.get("qk_norm_full") and not c["qk_norm"], [{"qk_norm_full": False}, {"qk_norm": True}]),
    ("the full-width q/k norm is built for the linear layout", lambda c: c.get("qk_norm_full") and c["layout"] != "linear", [{"qk_norm_full": False}, {"layout": "linear"}]),
    ("the Gather form needs kv heads == heads", lambda c: c["fused_qkv"] in ("gather", "gather_mid") and c["kv_heads"] != c["heads"],
     [{"fused_qkv": "split"}, {"fused_qkv": "none"}, {"kv_heads": lambda c: c["heads"]}]),
    ("NCHW uses Conv projections", lambda c: c["layout"] == "nchw" and c["projection"] != "matmul",
     [{"projection": "matmul"}, {"layout": "linear"}]),
    ("NCHW has its own head split", lambda c: c["layout"] == "nchw" and c["head_split"] != RT, [{"head_split": RT}, {"layout": "linear"}]),
    ("NCHW is built without RoPE", lambda c: c["layout"] == "nchw" and c["rope"] != "none", [{"rope": "none"}, {"layout": "linear"}]),
    ("NCHW is built without q/k norm", lambda c: c["layout"] == "nchw" and c["qk_norm"], [{"qk_norm": False}, {"layout": "linear"}]),
    ("NCHW is built without a cache", lambda c: c["layout"] == "nchw" and _has_past(c), [NO_PAST, {"layout": "linear"}]),
    ("NCHW repeats kv heads", lambda c: c["layout"] == "nchw" and c["gqa_repeat"] == "broadcast" and _group(c) > 1,
     [{"gqa_repeat": "expand"}, {"layout": "linear"}]),
    ("mha-conv replaces MatMul projections", lambda c: c["layout"] == "mha_conv" and (c["projection"] != "matmul" or c["fused_qkv"] != "none"),
     [{"projection": "matmul", "fused_qkv": "none"}, {"layout": "linear"}]),
    ("folded heads: no GQA", lambda c: c["head_split"] == "folded" and c["kv_heads"] != c["heads"],
     [{"head_split": RT}, {"kv_heads": lambda c: c["heads"]}]),
    ("folded heads use a Softmax core", lambda c: c["head_split"] == "folded" and c["attention_op"],
     [{"head_split": RT}, {"attention_op": False}]),
    ("folded_view is for folded heads", lambda c: c["folded_view"] and c["head_split"] != "folded",
     [{"folded_view": False}, {"head_split": "folded"}]),
    ("folded heads take constant masks",
     lambda c: c["head_split"] == "folded" and not c["folded_view"] and c["mask"] not in ("none", "causal", "sliding_window"),
     [{"folded_view": True}, {"head_split": RT}, {"mask": "causal"}]),
    ("per-head biases on folded scores need batch 1",
     lambda c: c["head_split"] == "folded" and not c["folded_view"] and (c["batch"] > 1 or c["dynamic"]) and (c["alibi"] or c["relative_bias"]),
     [{"folded_view": True}, {"batch": 1, "dynamic": False}, {"head_split": RT}]),
    ("5-D broadcast GQA uses plain head splits", lambda c: c["gqa_repeat"] == "broadcast" and _group(c) > 1 and c["head_split"] != RT,
     [{"gqa_repeat": "expand"}, {"head_split": RT}]),
    ("the Attention op has one scale attribute", lambda c: c["attention_op"] and c["scaling"] not in ("div_scores", "none"),
     [{"scaling": "div_scores"}, {"attention_op": False}]),
    ("Attention op masks", lambda c: c["attention_op"] and c["mask"] not in ("none", "causal", "additive_input", "bool_input", "padding_input", "causal_padding_input"),
     [{"mask": "causal"}, {"attention_op": False}]),
    ("the Attention op takes no extra biases", lambda c: c["attention_op"] and (c["alibi"] or c["relative_bias"]),
     [{"alibi": False, "relative_bias": False}, {"attention_op": False}]),
    ("the Attention op has no visible softmax", lambda c: c["attention_op"] and (c["softmax_cast"] or c["nan_guard"]),
     [{"softmax_cast": False, "nan_guard": False}, {"attention_op": False}]),
    ("the Attention op returns the full cache", lambda c: c["attention_op"] and c["past_kv"] not in ("none", "full"),
     [{"past_kv": "full"}, {"attention_op": False}]),
    ("the Attention op reads [B, H, S, D]", lambda c: c["attention_op"] and c["head_split"] != RT, [{"head_split": RT}, {"attention_op": False}]),
    ("the Attention op is built for the linear layout", lambda c: c["attention_op"] and c["layout"] != "linear",
     [{"attention_op": False}, {"layout": "linear"}]),
    ("a fused K transpose leaves no key for RoPE or q/k norm", lambda c: c["head_split"] == "fused_kt" and (c["rope"] != "none" or (c["qk_norm"] and not c.get("qk_norm_full"))),
     [{"head_split": RT}, {"rope": "none", "qk_norm": False, "qk_norm_full": False}]),
    ("the transposed key cache needs K^T from a plain split",
     lambda c: c["past_kv"] == "full_transposed_key" and c["head_split"] not in (RT, "fused_kt"), [{"head_split": RT}, {"past_kv": "full"}]),
    ("transposed key cache with broadcast GQA", lambda c: c["past_kv"] == "full_transposed_key" and c["gqa_repeat"] == "broadcast" and _group(c) > 1,
     [{"gqa_repeat": "expand"}, {"past_kv": "full"}]),
    ("LoRA is built on separate projections", lambda c: c["lora_rank"] and c["fused_qkv"] != "none", [{"lora_rank": 0}, {"fused_qkv": "none"}]),
    ("LoRA is built on MatMul projections", lambda c: c["lora_rank"] and c["projection"] not in ("matmul", "matmul_bias"),
     [{"projection": "matmul"}, {"lora_rank": 0}]),
    ("opset-23 ops need opset 23",
     lambda c: (c["rope"] == "rotary_op" or c["attention_op"]) and c.get("target_opset") not in (None, 23),
     [{"target_opset": 23}, {"rope": lambda c: "rotate_half" if c["rope"] == "rotary_op" else c["rope"], "attention_op": False}]),
]


def reconcile(fields: Fields, pinned: set[str] = frozenset()) -> Fields:
    """Resolve every inconsistent combination without touching ``pinned`` fields."""
    c = dict(fields)
    for _ in range(4 * len(RULES)):
        for why, broken, fixes in RULES:
            if not broken(c):
                continue
            for fix in fixes:
                if not set(fix) & pinned:
                    c.update({k: (v(c) if callable(v) else v) for k, v in fix.items()})
                    break
            else:
                raise PinConflict(f"pinned fields {sorted(pinned)} conflict: {why}")
            break
        else:
            return c
    raise PinConflict("the rules did not settle (a rule undoes another)")
