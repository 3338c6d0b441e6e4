"""The failures dsbs explains itself: one family, each with the CLI's exit status.

A `DsbsError` is a stage's or the user's problem with a message that says what to change;
the CLI prints it without a traceback and exits with its `exit_code`. Anything else that
escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import ClassVar


class DsbsError(Exception):
    """A failure dsbs explains: the message names the cause and what to change."""

    exit_code: ClassVar[int] = 1
    """The CLI's exit status: 1 for bad data, storage or a failed stage, 2 for bad usage."""
    kind: ClassVar[str] = "error"
    """How the CLI labels it (`dsbs: <kind>: <message>`)."""


class UsageError(DsbsError, ValueError):
    """A command or setting that cannot work as given (a config key, a flag's value)."""

    exit_code = 2
    kind = "config error"


class InputError(DsbsError, ValueError):
    """Input data that cannot be used: a missing split, a malformed file, too many bad rows."""


class NotFoundError(DsbsError, FileNotFoundError):
    """Something a command reads is not there: a stage's output, an export, an S3 prefix."""
