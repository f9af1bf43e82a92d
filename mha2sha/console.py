"""What the console commands print about the blocks (``mha2sha inspect``, ``convert``, ``demo``)."""

from __future__ import annotations

import os


def shown_path(path) -> str:
    """Paths in messages are absolute, whatever the user typed: they can be pasted anywhere."""
    return os.path.abspath(path)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def blocks_table(blocks) -> str:
    conv = [b for b in blocks if b.converted]
    skipped = [b for b in blocks if not b.converted]
    out = []
    if conv:
        rows = [[b.name, b.heads, b.kv_heads, b.head_dim, b.features.get("rope"), b.features.get("mask"), b.features.get("past_kv"), b.features.get("lora"), b.features.get("qk_norm")] for b in conv]
        out.append(_table(rows, ["block", "heads", "kv heads", "head dim", "rope", "mask", "past kv", "lora", "qk norm"]))
    if skipped:
        out.append("not converted:")
        for b in skipped:
            out.append(f"  {b.name} {b.anchor}: {b.reason}" + (f" (stopped at {b.stopped_at})" if b.stopped_at else ""))
            if len(b.stops) > 1:  # the walk stopped elsewhere too: list every stop
                out.extend(f"    walk stopped: {s}" for s in b.stops)
    if not blocks:
        out.append("no Softmax or Attention op in the model")
    return "\n".join(out)
