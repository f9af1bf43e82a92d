"""mha2sha: rewrite multi-head attention in ONNX models into verified single-head attention."""

from mha2sha._version import __version__

# The Python entry points (docs/architecture.md); each is imported on first use.
__all__ = ["__version__", "convert", "inspect", "ConvertOptions", "ConversionResult", "MHA2SHAConverter"]


def __getattr__(name: str):
    # The Python entry points, imported on first use (``import mha2sha`` stays light).
    if name == "MHA2SHAConverter":
        from mha2sha.compat import MHA2SHAConverter

        return MHA2SHAConverter
    if name in ("convert", "inspect", "ConvertOptions", "ConversionResult"):
        from mha2sha import api

        return getattr(api, name)
    raise AttributeError(f"module 'mha2sha' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
