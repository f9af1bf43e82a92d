"""Step 2 of docs/user-guide.md: quantization encodings for the exported model with AIMET
(aimet-onnx): int8 weights and activations, calibrated on a few random token sequences.
Writes OUT_DIR/NAME.onnx (the model as AIMET saw it) and OUT_DIR/NAME.encodings.

Usage: python aimet_encodings.py MODEL.onnx OUT_DIR NAME
Needs: pip install aimet-onnx (after torch: see the guide)
"""

import logging
import os
import sys

import numpy as np
import onnx
from aimet_onnx.quantsim import QuantizationSimModel

model_path, out_dir, name = sys.argv[1:4]
logging.getLogger("Quant").setLevel(logging.ERROR)
model = onnx.load(model_path)
sim = QuantizationSimModel(model, param_type="int8", activation_type="int8")
rng = np.random.default_rng(0)
# Calibration data: real token sequences in practice; random ones for this tiny model.
batches = [{"input_ids": rng.integers(1, 128, (1, 16)).astype(np.int64),
            "attention_mask": np.ones((1, 16), np.int64)} for _ in range(4)]
sim.compute_encodings(batches)
os.makedirs(out_dir, exist_ok=True)
sim.export(out_dir, name, encoding_version="1.0.0")
print(f"wrote {out_dir}/{name}.onnx and {out_dir}/{name}.encodings")
