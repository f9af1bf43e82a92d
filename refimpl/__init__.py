"""Pure-numpy reference: closed-form attention functions, AIMET quantization arithmetic, and an
ONNX interpreter. Imports nothing from the rest of the project and never onnxruntime or torch."""
