"""Equivalence verification of MHA and SHA models, and the verification report.

The public entry points (docs/architecture.md, docs/verification.md), imported on first use so
that ``import verify`` (and a converter importing one submodule) stays light. The submodules
stay importable for what is not listed here."""

__all__ = [
    "verify_models",
    "derive_correspondence",
    "Correspondence",
    "BlockCorrespondence",
    "CacheSplit",
    "CorrespondenceError",
    "read_correspondence",
    "write_report",
    "verdict",
    "verdict_table",
]

_WHERE = {
    "verify_models": ("verify.run", "verify_models"),
    "derive_correspondence": ("verify.derive", "derive_correspondence"),
    "Correspondence": ("verify.correspondence", "Correspondence"),
    "BlockCorrespondence": ("verify.correspondence", "BlockCorrespondence"),
    "CacheSplit": ("verify.correspondence", "CacheSplit"),
    "CorrespondenceError": ("verify.correspondence", "CorrespondenceError"),
    "read_correspondence": ("verify.correspondence", "read"),
    "write_report": ("verify.report", "write_report"),
    "verdict": ("verify.report", "verdict"),
    "verdict_table": ("verify.report", "verdict_table"),
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        module, attr = _WHERE[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'verify' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
