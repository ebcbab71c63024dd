"""The one error type users see: ``symgrad: error: <where>: <what>`` and exit code 2.

The whole error contract (exit 0/1/2/3 and the internal-error line) is held by
:func:`symgrad.cli.main`; this is the exception bad input raises anywhere in the package.
"""

from __future__ import annotations

__all__ = ["SymgradError"]


class SymgradError(Exception):
    """Bad input (spec, expression, file). ``where`` names the place, ``what`` the problem and fix."""

    def __init__(self, where: str, what: str):
        super().__init__(f"{where}: {what}")
        self.where = where
        self.what = what

    def one_line(self) -> str:
        """The message as one printable line (whitespace runs, newlines included, become one
        space; other control characters, say in a file name, are shown as ``?``)."""
        text = " ".join(f"symgrad: error: {self.where}: {self.what}".split())
        return "".join(c if c.isprintable() else "?" for c in text)
