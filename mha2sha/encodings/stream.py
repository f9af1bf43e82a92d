"""An encodings file read in bounded memory: the top-level object and its sections by hand,
each entry by the standard library's C JSON scanner.

An AIMET file is one object whose sections (``activation_encodings``, ``param_encodings``,
``encodings``) hold thousands of entries; almost all of its bytes are numbers. Parsing the
whole document first (``json.loads``) holds every number as a Python object at once (about
5x the file). Here the file is read in chunks, the top-level object and the sections are
walked by a small scanner, and each entry (one tensor's encoding, at most a few MB of text)
is handed to ``json.JSONDecoder.raw_decode`` -- the same C scanner ``json.loads`` uses -- and
from there to the version's entry parser, which keeps its numbers as numpy arrays. Peak
memory is one chunk, one entry and the arrays; time is about that of ``json.loads``.

Why not ijson: its C backend builds objects without a hook, so a key written twice in one
object silently keeps the last value; seeing every key means its per-event interface, whose
bare walk already costs about what ``json.loads`` does (0.9-1.7x its cpu at 200 MB) before
a Python step per event (tens of millions) is added (bench/bench_encodings.py prints it).

Every object, at every depth, refuses a key written twice (JSON would keep the last value):
entries through ``object_pairs_hook``, the top level and the 0.6.1 sections here.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator

CHUNK = 1 << 24  # 16 MB of text per read
_WS = re.compile(r"[ \t\n\r]*")


def _may_be_truncation(exc: json.JSONDecodeError, size: int) -> bool:
    """An error at the end of the buffer (or an unterminated string, reported where it
    starts) may only mean that the value goes on in the next chunk."""
    return exc.msg.startswith("Unterminated string") or exc.pos >= size - 64


class DuplicateKey(ValueError):
    """A key written twice in one JSON object."""


class JsonError(ValueError):
    """Not valid JSON: ``message`` says where (line, column) and what."""


def refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """object_pairs_hook: dict() in C first, the Python loop only on a mismatch."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return d


class Members:
    """The members of one section, read as they are iterated: ``kind`` is "object" (pairs
    ``(name, value)``) or "array" (pairs ``(index, value)``). Iterate once, to the end."""

    def __init__(self, kind: str, items: Iterator):
        self.kind = kind
        self._items = items

    def __iter__(self):
        return self._items


class Reader:
    """Incremental scanner over a binary file of UTF-8 JSON text."""

    def __init__(self, fh, chunk: int = CHUNK):
        self._fh = fh
        self._chunk = chunk
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder(object_pairs_hook=refuse_duplicate_keys)
        self.buf = ""
        self.pos = 0
        self.eof = False
        self._bytes_read = 0
        self._lines_before = 0  # newlines in the text dropped from the buffer
        self._column_before = 0  # characters after the last dropped newline

    # -- the buffer -------------------------------------------------------------------------
    def _fill(self, size: int | None = None) -> None:
        """Drop what has been consumed and read at least ``size`` more characters."""
        if self.pos:
            dropped = self.buf[: self.pos]
            newlines = dropped.count("\n")
            if newlines:
                self._lines_before += newlines
                self._column_before = len(dropped) - dropped.rfind("\n") - 1
            else:
                self._column_before += len(dropped)
            self.buf = self.buf[self.pos:]
            self.pos = 0
        data = self._fh.read(size or self._chunk)
        try:
            text = self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise JsonError(f"not UTF-8 text at byte {self._bytes_read + exc.start}") from None
        self._bytes_read += len(data)
        if not data:
            self.eof = True
        self.buf += text

    def _skip_ws(self) -> None:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return
            self._fill()

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end of the file)."""
        self._skip_ws()
        return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def expect(self, chars: str) -> str:
        ch = self.peek()
        if not ch or ch not in chars:
            wanted = " or ".join(repr(c) for c in chars)
            self.fail(f"Expecting {wanted}" if ch else f"Expecting {wanted} (the file ends here)")
        self.pos += 1
        return ch

    def at_end(self) -> bool:
        return self.peek() == ""

    # -- values -----------------------------------------------------------------------------
    def value(self):
        """One complete JSON value at the current position (read on until it is complete)."""
        self._skip_ws()
        more = self._chunk
        while True:
            try:
                obj, end = self._json.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof or not _may_be_truncation(exc, len(self.buf)):
                    self.fail(exc.msg, exc.pos)
                obj, end = None, len(self.buf)  # the value may continue in the next chunk
            except RecursionError:
                raise JsonError("nested too deeply") from None
            if end < len(self.buf) or self.eof:
                self.pos = end
                return obj
            # A value that reaches the end of the buffer may go on (a number, a truncated
            # entry): read on, doubling, so that a value larger than a chunk costs O(n).
            self._fill(more)
            more *= 2

    def key(self) -> str:
        if self.peek() != '"':
            self.fail("Expecting property name enclosed in double quotes")
        return self.value()

    def fail(self, msg: str, pos: int | None = None):
        pos = self.pos if pos is None else pos
        newline = self.buf.rfind("\n", 0, pos)
        line = self._lines_before + self.buf.count("\n", 0, pos) + 1
        column = pos - newline if newline >= 0 else self._column_before + pos + 1
        raise JsonError(f"line {line} column {column}: {msg}")

    # -- containers -------------------------------------------------------------------------
    def members(self, kind: str) -> Members:
        """The members of the object or array that starts here, read lazily."""
        self.expect("{" if kind == "object" else "[")
        return Members(kind, self._object_members() if kind == "object" else self._array_members())

    def _object_members(self):
        seen = set()
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            name = self.key()
            if name in seen:
                raise DuplicateKey(name)
            seen.add(name)
            self.expect(":")
            yield name, self.value()
            if self.expect(",}") == "}":
                return

    def _array_members(self):
        if self.peek() == "]":
            self.pos += 1
            return
        index = 0
        while True:
            yield index, self.value()
            index += 1
            if self.expect(",]") == "]":
                return


def top_level(reader: Reader, sections: tuple[str, ...]):
    """The pairs of the file's top-level object in file order; a section whose value is an
    object or an array comes as ``Members`` (consume it before the next pair). A file that
    is not an object yields its whole value once, under the key None."""
    if reader.peek() == "\ufeff":
        reader.fail("Unexpected UTF-8 BOM (save the file as UTF-8 without a byte order mark)")
    if reader.peek() != "{":
        value = reader.value()
        if not reader.at_end():
            reader.fail("Extra data")
        yield None, value
        return
    reader.pos += 1
    seen = set()
    if reader.peek() == "}":
        reader.pos += 1
    else:
        while True:
            key = reader.key()
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
            reader.expect(":")
            ch = reader.peek()
            if key in sections and ch in ("{", "["):
                members = reader.members("object" if ch == "{" else "array")
                yield key, members
                for _ in members:  # whatever the consumer left unread
                    pass
            else:
                yield key, reader.value()
            if reader.expect(",}") == "}":
                break
    if not reader.at_end():
        reader.fail("Extra data")
