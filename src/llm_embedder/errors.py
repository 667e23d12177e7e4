"""User-facing errors.

Bad input is not a bug: it gets ONE line that says what was wrong, where (file:line and field) and what to do,
and the CLI exits with code 2 and no traceback. Tracebacks are kept for our own bugs.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text} ({self.hint})"
        return " ".join(text.split("\n"))


class DataError(UserError):
    """A problem inside a data file, located by file, line number and field."""

    def __init__(
        self,
        path: str,
        lineno: int | None,
        message: str,
        *,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = str(path)
        self.lineno = lineno
        self.field = field
        where = self.path if lineno is None else f"{self.path}:{lineno}"
        if field:
            where = f"{where}: field '{field}'"
        super().__init__(f"{where}: {message}", hint=hint)
