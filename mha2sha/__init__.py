"""mha2sha: rewrite multi-head attention in ONNX models into verified single-head attention."""

__version__ = "0.1.0"
