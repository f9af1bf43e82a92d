"""Errors a user can act on, and the process exit codes they map to."""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_VERIFICATION_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_ATTENTION = 3
EXIT_INTERNAL = 4


class Mha2ShaError(Exception):
    """Base of the errors reported as one line with an exit code."""

    exit_code = EXIT_INTERNAL

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InputError(Mha2ShaError):
    """The model, its data or its encodings cannot be used as given."""

    exit_code = EXIT_BAD_INPUT


class OutputError(Mha2ShaError):
    """The outputs cannot be written where asked."""

    exit_code = EXIT_BAD_INPUT


class UsageError(Mha2ShaError):
    """Options that contradict each other or the model."""

    exit_code = EXIT_BAD_INPUT


class NoAttentionError(Mha2ShaError):
    """No attention block could be converted."""

    exit_code = EXIT_NO_ATTENTION


class Refusal(Exception):
    """A block the converter leaves unchanged, and why: the one refusal type of every stage
    (finding the heads, splitting, the passes). ``reason`` is a sentence a user can act on,
    ``at`` the node where the stage stopped (None when no single node is to blame). Not a
    Mha2ShaError: a refused block is reported, the run goes on."""

    def __init__(self, reason: str, at=None, stops=()):
        super().__init__(reason)
        self.reason = reason
        self.at = at
        # Every place the head walk stopped, "path: reason at Op(name)" (the near-misses: the
        # reason above is the one that decided, the others may need fixing too).
        self.stops = tuple(stops)

