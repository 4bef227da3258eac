"""The one error type for bad simulator input: files, specs and options that do not validate."""

from __future__ import annotations


class SimInputError(ValueError):
    """Bad input; the message names the file, line or field at fault."""
