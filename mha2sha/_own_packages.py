"""Make sure ``verify``, ``refimpl`` and ``fuzz`` are ours, not a user's file of the same name.

The distribution installs four top-level packages: ``mha2sha``, ``verify``, ``refimpl`` and
``fuzz`` (the project's fixed layout). The last three have common names: PyPI has
distributions called ``verify`` and ``fuzz``, and users keep a ``verify.py`` next to their
models. ``python -m mha2sha`` puts the working directory first on ``sys.path``, so such a
file would be imported instead of our package and the run would fail somewhere deep inside.

Our entry points therefore drop the working directory from ``sys.path`` (our command line never
imports a user's module), and everything that imports the three packages first checks that
they resolve next to ``mha2sha`` itself, raising one clear ImportError when they do not.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

OWN_PACKAGES = ("verify", "refimpl", "fuzz")

# The directory holding our top-level packages: site-packages for a wheel, the checkout for an
# editable install.
ROOT = Path(__file__).resolve().parent.parent


def _same_dir(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def drop_working_directory() -> None:
    """For entry points: remove the working directory from ``sys.path`` unless it is our root
    (running ``python -m mha2sha`` inside the checkout)."""
    cwd = os.getcwd()
    if _same_dir(cwd, ROOT):
        return
    sys.path[:] = [p for p in sys.path if not _same_dir(p or cwd, cwd)]


def _location(name: str) -> Path | None:
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
    return Path(origin).resolve() if origin else None


def check_own_packages() -> None:
    """Raise ImportError naming the file when one of our top-level packages resolves elsewhere."""
    for name in OWN_PACKAGES:
        where = _location(name)
        if where is None:
            raise ImportError(f"mha2sha's package {name!r} is not installed next to mha2sha ({ROOT}): reinstall mha2sha")
        if where != ROOT / name / "__init__.py":
            raise ImportError(f"{where} shadows mha2sha's own package {name!r} (installed in {ROOT}): "
                              f"rename that file or run from another directory")


def entry_point_guard(prog: str) -> bool:
    """What every console entry point runs first: drop the working directory from ``sys.path``
    and check our packages. False (after one error line on stderr) when they are shadowed."""
    drop_working_directory()  # a verify.py or fuzz.py in the working directory is not ours
    try:
        check_own_packages()
    except ImportError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return False
    return True
