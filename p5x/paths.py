"""Where p5x finds the files it ships: the bundled sample dataset and the prompt templates.

Resolved from this package's location, never from the working directory, so scripts and tests
behave the same wherever they are launched from.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PACKAGE_DIR = Path(__file__).resolve().parent
# a normalized dataset (see p5x.schema) built from Amazon 2018 5-core Gift_Cards; see its README.md
SAMPLE_DATA = PACKAGE_DIR / "sample_data" / "gift_cards"
# templates/<family>.json live at the repository root, next to the p5x package
TEMPLATES_DIR = PACKAGE_DIR.parent / "templates"


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temp file beside `path` (its folder made if need be) for the block to write; renamed onto
    `path` (mode 644) when the block ends, removed when it raises, so no reader ever sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
