"""Step 4a of docs/user-guide.md: run a converted model on Qualcomm's HTP backend (the x86
emulator onnxruntime-qnn bundles) and compare it with onnxruntime on the CPU.

The whole graph must run on HTP: CPU fallback is disabled, so an op QNN refuses is an error
here instead of silently running on the CPU. Float graphs run in fp16, so expect differences
of about 1e-3 of the output range. The model needs static input shapes.

Usage: python run_on_htp.py MODEL.onnx
Needs: pip install onnxruntime-qnn==2.7.0 (beside onnxruntime)
"""

import sys

import numpy as np
import onnxruntime as ort
import onnxruntime_qnn as qnn

model = sys.argv[1]
ort.set_default_logger_severity(3)  # errors only: QNN's notes about this x86 emulator are noise here
ort.register_execution_provider_library("QNNExecutionProvider", qnn.get_library_path())
devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
options = {"backend_path": qnn.get_qnn_htp_path(), "enable_htp_fp16_precision": "1",
           "soc_model": "60", "htp_arch": "73"}  # a chip with fp16 (the emulator's default has none)
so = ort.SessionOptions()
so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
so.add_provider_for_devices(devices, options)
htp = ort.InferenceSession(model, so)
assert "QNNExecutionProvider" in htp.get_providers(), htp.get_providers()
cpu = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

rng = np.random.default_rng(0)
feeds = {}
for i in cpu.get_inputs():
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    if i.type == "tensor(int64)":
        # token ids, masks (all ones) and positions: small non-negative integers
        feeds[i.name] = np.ones(shape, np.int64) if "mask" in i.name else rng.integers(1, 100, shape).astype(np.int64)
    else:
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
names = [o.name for o in cpu.get_outputs()]
for name, on_htp, on_cpu in zip(names, htp.run(names, feeds), cpu.run(names, feeds)):
    err = float(np.max(np.abs(on_htp.astype(np.float64) - on_cpu)))
    scale = float(np.max(np.abs(on_cpu)))
    print(f"{name}: max |HTP - CPU| = {err:.3g} ({err / scale:.2g} of the output range)")
