"""The one error an encodings file raises: ``"<path>: <problem>"`` on one line."""

from __future__ import annotations

import os

from mha2sha.errors import InputError

OBJECT_SOURCE = "<encodings>"  # the path shown when the encodings came as a JSON object


class EncodingsError(InputError, ValueError):
    """An encodings file that cannot be used as given (exit code: bad input)."""

    def __init__(self, path: str | os.PathLike | None, message: str):
        super().__init__(OBJECT_SOURCE if path is None else path, message)


class Problem(Exception):
    """A problem found while parsing, before the file's path is known to the parser;
    io.read_encodings turns it into an EncodingsError naming the file."""
