"""mha2sha: rewrite multi-head attention in ONNX models into verified single-head attention."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The Python entry points, imported on first use (``import mha2sha`` stays light).
    if name == "MHA2SHAConverter":
        from mha2sha.compat import MHA2SHAConverter

        return MHA2SHAConverter
    if name in ("convert", "inspect", "ConvertOptions", "ConversionResult"):
        from mha2sha import api

        return getattr(api, name)
    raise AttributeError(f"module 'mha2sha' has no attribute {name!r}")
