"""Step 1 of docs/user-guide.md: a tiny random Llama built from a config (nothing is
downloaded), exported with torch.onnx (TorchScript exporter, opset 17), as a prefill graph:
input_ids and attention_mask in, logits out.

Usage: python export_tiny_llama.py OUT.onnx
Needs: pip install torch transformers
"""

import sys
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1] if len(sys.argv) > 1 else "tiny_llama.onnx"
torch.manual_seed(0)
config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
model = LlamaForCausalLM(config).eval()


class Logits(torch.nn.Module):
    """The graph the device runs: no cache objects, only tensors in and out."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


ids = torch.randint(1, config.vocab_size, (1, 16))
mask = torch.ones_like(ids)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings
    torch.onnx.export(Logits(model), (ids, mask), out, input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], opset_version=17, dynamo=False)
print(f"wrote {out}")
