"""Errors p5x raises for bad input, each rendering as one line that names file, line and field."""

from __future__ import annotations

from pathlib import Path


class P5XError(Exception):
    """Base class for every user-facing p5x error (CLIs print it on one line and exit 2)."""


class DataError(P5XError):
    """Bad input data: a missing file, a malformed line, a duplicate or dangling id, an empty result."""

    def __init__(self, message: str, file: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field, self.message = file, line, field, message
        where = ""
        if file is not None:
            where = str(file)
            if line is not None:
                where += f":{line}"
            where += ": "
        if field is not None:
            where += f"field '{field}': "
        super().__init__(where + message)


class TemplateError(P5XError):
    """A template file that does not match its family's declared placeholders."""


class CheckpointError(P5XError):
    """A checkpoint that is incomplete, or was trained on other data or templates."""


class ConfigError(P5XError):
    """Contradictory or unsupported options (e.g. an option a backbone cannot honour)."""


def close_matches(name: str, options) -> str:
    """A ' (did you mean ...?)' suffix for unknown-name errors, or '' when nothing is close."""
    import difflib

    hits = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(hits)}?)" if hits else ""
