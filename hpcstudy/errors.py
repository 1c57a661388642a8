"""Errors a user can act on.

A :class:`UserError` carries one line that says what was wrong, where, and how to fix it. The
CLI prints it as ``hpcstudy: error: ...`` and exits with code 2; it never shows a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = message, where, fix
        parts = [f"{where}: {message}" if where else message]
        if fix:
            parts.append(fix)
        super().__init__(" — ".join(parts))


class DataProblem(Exception):
    """Data that fails a check (checksums, schema): reported, exit code 1."""

    exit_code = 1


class CannotWrite(UserError):
    """A place the machine will not let hpcstudy write (permissions, a read-only file system):
    an I/O failure, printed as one line, exit code 1."""

    exit_code = 1
