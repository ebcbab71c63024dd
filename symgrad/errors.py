"""The one error type users see: ``symgrad: error: <where>: <what>`` and exit code 2."""

from __future__ import annotations


class SymgradError(Exception):
    """Bad input (spec, expression, file). ``where`` names the place, ``what`` the problem and fix."""

    def __init__(self, where: str, what: str):
        super().__init__(f"{where}: {what}")
        self.where = where
        self.what = what

    def one_line(self) -> str:
        text = f"symgrad: error: {self.where}: {self.what}"
        return " ".join(text.split())
