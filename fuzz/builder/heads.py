"""Head split and merge, GQA repeats, heads folded into the batch."""

from __future__ import annotations

from fuzz.builder.base import BuilderBase


class HeadsMixin(BuilderBase):
    def split_heads(self, y: str, n: int, *, key: bool = False) -> str:
        cfg, g = self.cfg, self.g
        d = cfg.d
        if cfg.layout == "nchw":
            t = g.reshape(y, [0, n, d, -1])  # [B, n, D, S]
            return t if key else g.transpose(t, [0, 1, 3, 2])
        heads = -1 if cfg.reshape_minus_one else n
        r = g.reshape(y, [0, 0, heads, d])
        if key and cfg.head_split == "fused_kt":
            return g.transpose(r, [0, 2, 3, 1])
        return g.transpose(r, [0, 2, 1, 3])

    def merge_heads(self, out: str) -> str:
        cfg, g = self.cfg, self.g
        if cfg.layout == "nchw":
            return g.reshape(g.transpose(out, [0, 1, 3, 2]), [0, cfg.heads * cfg.d, 1, -1])
        return g.reshape(g.transpose(out, [0, 2, 1, 3]), [0, 0, -1 if cfg.reshape_minus_one else cfg.heads * cfg.d])

    def repeat_kv(self, x: str, transposed: bool) -> str:
        cfg, g = self.cfg, self.g
        n = cfg.group
        if n == 1 or cfg.gqa_repeat in ("broadcast", "mqa_broadcast"):
            return x  # mqa_broadcast: MatMul broadcasts the single kv head
        if cfg.gqa_repeat == "tile":
            return g.op("Tile", [x, g.ints([1, n, 1, 1], "repeats")])
        e = g.op("Expand", [g.unsqueeze(x, [2]), g.ints([1, 1, n, 1, 1], "shape")])
        return g.reshape(e, [0, cfg.heads, cfg.d, -1] if transposed else [0, cfg.heads, -1, cfg.d])

    def _fold(self, x: str, inner: list[int], seq_at: int) -> str:
        """[B, H, a, b] -> [B*H, a, b] (heads folded into batch); ``seq_at`` is the index in
        ``inner`` of the sequence length. Static target, or with symbolic dims the form that
        BART / Whisper TorchScript exports write: [Shape(x)[0] * H, .., -1 for the sequence, ..].
        (A static S next to a symbolic batch would tie S to the example size.)"""
        cfg, g = self.cfg, self.g
        if not cfg.dynamic:
            return g.reshape(x, [-1, *inner])
        batch = g.op("Gather", [g.op("Shape", [x]), g.ints([0], "idx")], axis=0)
        lead = g.op("Mul", [batch, g.ints([cfg.heads], "heads")])
        rest = [-1 if k == seq_at else n for k, n in enumerate(inner)]
        return g.reshape(x, g.op("Concat", [lead, g.ints(rest, "shape")], axis=0))

    def _unfold(self, x: str) -> str:
        """[B*H, S, D] -> [B, H, S, D]; with symbolic dims the batch read from the model input."""
        cfg, g = self.cfg, self.g
        if not cfg.dynamic:
            return g.reshape(x, [-1, cfg.heads, cfg.seq, cfg.d])
        batch = g.op("Gather", [g.op("Shape", ["hidden_states"]), g.ints([0], "idx")], axis=0)
        return g.reshape(x, g.op("Concat", [batch, g.ints([cfg.heads, -1, cfg.d], "shape")], axis=0))
