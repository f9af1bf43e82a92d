"""A working directory that holds a user's own ``verify.py``, ``fuzz.py`` and ``refimpl/``.

Each of them, when imported, exits the process with a message naming itself: a command that
imports one of them instead of our package fails with that message."""

from __future__ import annotations

from pathlib import Path

SHADOW_MESSAGE = "imported the user's {} instead of mha2sha's package"


def make_shadowed_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("verify", "fuzz"):
        (path / f"{name}.py").write_text(f"raise SystemExit({SHADOW_MESSAGE.format(name + '.py')!r})\n")
    (path / "refimpl").mkdir(exist_ok=True)
    (path / "refimpl" / "__init__.py").write_text(f"raise SystemExit({SHADOW_MESSAGE.format('refimpl/')!r})\n")
    return path
