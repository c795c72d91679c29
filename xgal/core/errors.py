"""Errors a person can act on, as opposed to bugs.

The CLI prints a `UserError` as one line and exits 2; any other exception keeps its traceback,
because it is a defect to report. The scoring service maps `InvalidArgument` to
INVALID_ARGUMENT, and `OutOfFiles` to RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """Something the user asked for or gave cannot be done as given; the message says why."""


class InvalidArgument(UserError, ValueError):
    """A value the user gave is outside what is accepted (a ValueError too, for callers that
    catch the standard type)."""


class OutOfFiles(UserError):
    """No file descriptor was left to open a file (EMFILE: this process's limit; ENFILE: the
    system's): a limit of the machine, never a fault of the file being opened."""


def raise_if_out_of_files(exc: OSError) -> None:
    """Raise `OutOfFiles` in place of `exc` when it says no file descriptor was left, naming
    the limit (RLIMIT_NOFILE) and what to do; return when it says anything else."""
    if exc.errno == errno.ENFILE:
        raise OutOfFiles(
            "the system ran out of file descriptors (its table of open files is full, ENFILE); "
            "raise fs.file-max or close other programs' files, then try again (not a fault of "
            "the file being opened)"
        ) from None
    if exc.errno == errno.EMFILE:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        shown = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        raise OutOfFiles(
            f"this process ran out of file descriptors: its limit (RLIMIT_NOFILE) is {soft} open "
            f"files (hard limit {shown}); raise it (ulimit -n, systemd's LimitNOFILE, the "
            "container's nofile ulimit) or send it fewer requests at once, then try again (not a "
            "fault of the file being opened)"
        ) from None
