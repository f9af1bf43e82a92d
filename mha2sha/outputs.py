"""One output transaction per run: what a conversion writes appears as one step, or not at all.

A run into OUTDIR:

1. takes a lock on OUTDIR (``flock`` on the folder itself, released by the kernel when the
   process dies, so a killed run never leaves a stale lock): a second run into the same
   folder at the same time is refused with a clear message instead of mixing its files in;
2. removes what a killed run left: hidden staging folders (``.mha2sha-partial-*``) and the
   files of a commit that was cut short;
3. writes everything into a fresh hidden staging folder inside OUTDIR (same file system,
   so moving in is a rename);
4. commits: the old run's files (listed in the manifest ``.mha2sha-manifest.json``, the only
   files the tool ever deletes) are removed, reports and markers first, then the new files
   are renamed in, the model after its data, the report last. A user's file where the run
   wants to write is refused before anything moves (``overwrite=True`` replaces it, never
   an input of the run).

Before the commit writes anything, the manifest lists the old and the new files, so a commit
killed half-way is finished (cleaned) by the next run. A verification report in OUTDIR
therefore always describes the model beside it. Files follow the umask (no 0600 temp files).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from mha2sha.errors import OutputError

STAGING_PREFIX = ".mha2sha-partial-"
MANIFEST = ".mha2sha-manifest.json"
# Written last, in this order: a report in the folder means the files beside it are complete.
LAST = ("VERIFICATION_FAILED", "verification_report.md", "verification_report.html", "verification_report.json")

try:  # POSIX; elsewhere runs are not locked against each other
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def safe_output_name(name: str) -> str:
    """A file name that stays inside the output folder whatever the model calls itself."""
    cleaned = "".join(c if c.isalnum() or c in "._-+" else "_" for c in name).lstrip(".")
    if not cleaned:
        raise OutputError(name, "the output name is empty after removing unsafe characters")
    return cleaned


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a complete file (temporary name, then rename), with the
    mode any file the user writes gets (umask), unlike mkstemp's 0600."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_manifest(out_dir: Path) -> list[str]:
    """Files (relative paths) the previous run wrote into ``out_dir``; [] when none or unreadable."""
    try:
        doc = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        files = doc["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [f for f in files if isinstance(f, str) and _safe_relative(f)]


def _safe_relative(rel: str) -> bool:
    p = Path(rel)
    return bool(p.parts) and not p.is_absolute() and ".." not in p.parts


def _write_manifest(out_dir: Path, files: list[str]) -> None:
    write_text(out_dir / MANIFEST, json.dumps({"tool": "mha2sha", "files": sorted(set(files))}, indent=1) + "\n")


class OutputTransaction:
    """The files of one run, staged in a hidden folder of ``out_dir`` and moved in on commit.

    ``protected``: the run's inputs, never written over. ``overwrite``: replace files of the
    same names that the tool did not write (default: refuse)."""

    def __init__(self, out_dir: Path, protected: list[Path], *, overwrite: bool = False):
        self.out_dir = Path(out_dir).resolve()
        self.protected = {p.resolve() for p in protected if p.exists()}
        self.overwrite = overwrite
        self.files: list[str] = []
        self._lock_fd = _lock(self.out_dir)
        self.tmp: Path | None = None
        try:
            self._recover()
            self.tmp = self.out_dir / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
            self.tmp.mkdir()
        except OSError as exc:
            self._release()
            raise OutputError(self.out_dir, f"cannot write into the output folder: {exc.strerror or exc}") from None

    # -- staging ------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Where to write the output file ``name`` (a relative path) for now."""
        parts = Path(name).parts
        name = "/".join([*parts[:-1], safe_output_name(parts[-1])])
        self.check_target(name)
        self.files.append(name)
        staged = self.tmp / name
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    def final(self, name: str) -> Path:
        return self.out_dir / name

    def check_target(self, name: str) -> None:
        """Refuse now, before any work, to write ``name`` over an input or a user's file."""
        if not _safe_relative(name):
            raise OutputError(self.out_dir / name, "output names must stay inside the output folder")
        final = self.out_dir / name
        if final.resolve() in self.protected:
            raise OutputError(final, "refusing to overwrite an input file; choose another output folder or name")
        for parent in list(Path(name).parents)[:-1]:
            if (self.out_dir / parent).is_symlink() or (self.out_dir / parent).is_file():
                raise OutputError(self.out_dir / parent, "is a symbolic link or a file where the run writes a folder; refusing to write through it")
        if (final.exists() or final.is_symlink()) and not self.overwrite and name not in self._owned():
            kind = "folder" if final.is_dir() and not final.is_symlink() else "file"
            raise OutputError(final, f"a {kind} of this name that mha2sha did not write is in the way; "
                                     "move it, choose another output folder, or pass --overwrite to replace it")

    def _owned(self) -> set[str]:
        return set(read_manifest(self.out_dir))

    def staged_files(self) -> list[str]:
        return sorted(p.relative_to(self.tmp).as_posix() for p in self.tmp.rglob("*") if p.is_file() or p.is_symlink())

    def drop_staged(self) -> None:
        """Forget everything staged so far (a failed run commits only its report)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.files = []

    # -- commit -------------------------------------------------------------------------
    def commit(self, last: str | None = None) -> dict[str, Path]:
        """Replace the previous run's files with the staged ones; ``last`` (the model) goes in
        after its data, before the reports. Returns {name: final path}."""
        try:
            new = self.staged_files()
            for name in new:
                self.check_target(name)
                if (self.out_dir / name).is_dir() and not (self.out_dir / name).is_symlink():
                    raise OutputError(self.out_dir / name, "is a folder where the run writes a file")
            old = [f for f in read_manifest(self.out_dir) if f not in new]
            _write_manifest(self.out_dir, old + new)  # a cut-short commit is cleaned by the next run
            for name in sorted(old, key=_removal_order):
                _remove(self.out_dir, name)
            for name in sorted(new, key=lambda n: _placement_order(n, last)):
                target = self.out_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.tmp / name, target)
            _write_manifest(self.out_dir, new)
        except OSError as exc:
            raise OutputError(self.out_dir, f"cannot move the outputs into place: {exc.strerror or exc}") from None
        finally:
            self.discard()
        return {name: self.out_dir / name for name in new}

    def discard(self) -> None:
        """Remove the staging folder and release the lock (the output folder is unchanged)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    # -- after a killed run ----------------------------------------------------------------
    def _recover(self) -> None:
        """Remove what a killed run left (we hold the lock: no live run owns it)."""
        for entry in self.out_dir.iterdir():
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(f"{MANIFEST}.") and entry.name.endswith(".tmp") and entry.is_file():
                entry.unlink(missing_ok=True)  # a manifest write cut short


def _removal_order(name: str) -> tuple[int, str]:
    base = Path(name).name
    return (0 if base in LAST else 1, name)  # the old verdict goes first


def _placement_order(name: str, last: str | None) -> tuple[int, int, str]:
    base = Path(name).name
    if base in LAST:
        return (2, LAST.index(base), name)
    return (1 if name == last else 0, 0, name)


def _remove(out_dir: Path, name: str) -> None:
    target = out_dir / name
    if target.is_symlink() or target.is_file():
        target.unlink()
    parent = target.parent
    while parent != out_dir:  # folders the tool made (inputs/0) go when empty; a user's files keep them
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def _lock(out_dir: Path) -> int | None:
    if fcntl is None:
        return None
    try:
        fd = os.open(out_dir, os.O_RDONLY)
    except OSError as exc:
        raise OutputError(out_dir, f"cannot open the output folder: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(out_dir, "another mha2sha run is writing into this output folder; wait for it to finish or choose another folder") from None
    return fd


def disk_full(exc: BaseException, out_dir: Path) -> OutputError | None:
    """The one-line error for a full disk or quota (bad input, exit 2: the user can act on
    it), naming the folder and its free space; None for any other error."""
    import errno

    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return None
    try:
        free = f"{shutil.disk_usage(out_dir).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return OutputError(out_dir, f"{exc.strerror or 'No space left on device'} ({free}); nothing was written: free some space or choose another output folder")
