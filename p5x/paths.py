"""Where p5x finds the files it ships: the bundled sample dataset and the prompt templates.

Resolved from this package's location, never from the working directory, so scripts and tests
behave the same wherever they are launched from.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# a normalized dataset (see p5x.schema) built from Amazon 2018 5-core Gift_Cards; see its README.md
SAMPLE_DATA = PACKAGE_DIR / "sample_data" / "gift_cards"
# templates/<family>.json live at the repository root, next to the p5x package
TEMPLATES_DIR = PACKAGE_DIR.parent / "templates"
