"""Errors a person can act on, as opposed to bugs.

The CLI prints a `UserError` as one line and exits 2; any other exception keeps its traceback,
because it is a defect to report. The scoring service maps `InvalidArgument` to
INVALID_ARGUMENT.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user asked for or gave cannot be done as given; the message says why."""


class InvalidArgument(UserError, ValueError):
    """A value the user gave is outside what is accepted (a ValueError too, for callers that
    catch the standard type)."""
