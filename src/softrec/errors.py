"""User-facing errors: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input or settings (bad file, bad option), not a bug.

    The message must name the file, line or field and say what was expected.
    """

    exit_code = 2


class DataFormatError(UserError):
    """A malformed input file: `where` names the file (and line/field when known)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem
