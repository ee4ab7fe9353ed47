"""Helpers shared by the data_prep converters: reading raw files, cleaning text, k-core filtering.

Every converter returns a `Converted` bundle (items, interactions, users, source); the CLI hands it
to `p5x.schema.write_dataset`, which validates and writes it atomically. Errors are raised as
`p5x.errors.DataError` naming file, line and field, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from p5x.errors import DataError
from p5x.schema import Interaction, Item


@dataclass
class Converted:
    """What a converter produces: plain schema records, ready for write_dataset."""

    items: list[Item]
    interactions: list[Interaction]
    users: dict[str, dict] = field(default_factory=dict)
    source: str = ""


# ----------------------------------------------------------------------------------------------
# files


def require_file(path: Path, what: str = "file") -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found", path)
    return path


def require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DataError("input folder not found", path)
    return path


def first_existing(folder: Path, names: tuple[str, ...]) -> Path:
    """The first of `names` present in `folder`; a DataError listing them all when none is."""
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise DataError(f"file not found (looked for {', '.join(names)})", folder)


def open_text(path: Path, encoding: str = "utf-8"):
    """Open a text file, transparently gunzipping `.gz` files."""
    require_file(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def numbered_lines(f, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of an open text file; undecodable bytes or a broken
    gzip stream become a DataError naming the line where reading stopped."""
    lineno = 0
    try:
        for lineno, line in enumerate(f, 1):
            yield lineno, line
    except UnicodeDecodeError as e:
        raise DataError(f"not {e.encoding} text ({e.reason})", path, lineno + 1, "line") from None
    except (OSError, EOFError) as e:   # gzip.BadGzipFile is an OSError
        raise DataError(f"unreadable ({e})", path, lineno + 1, "line") from None


def iter_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, dict) for each non-blank line of a JSON-lines file.

    Old Amazon dumps write Python dict literals instead of JSON, so a line that is not JSON is
    parsed with ast.literal_eval, which only evaluates literals (never code).
    """
    with open_text(path) as f:
        for lineno, line in numbered_lines(f, path):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                try:
                    row = ast.literal_eval(line)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise DataError(f"not a JSON object or Python dict literal ({e.msg})",
                                    path, lineno, "line") from None
            if not isinstance(row, dict):
                raise DataError("expected an object", path, lineno, "line")
            yield lineno, row


def iter_tsv(path: Path, encoding: str = "utf-8", delimiter: str = "\t"):
    """(first line number, row) for each record of a tab-separated file with CSV-style quoting.

    RecBole writes fields holding tabs or newlines in double quotes (pandas' default), so a quoted
    title can span two physical lines; csv's reader rejoins it, and we report the line it started on.
    """
    with open_text(path, encoding) as f:
        reader = csv.reader(f, delimiter=delimiter, quotechar='"')
        start = 1
        try:
            for row in reader:
                if row and any(c.strip() for c in row):
                    yield start, row
                start = reader.line_num + 1
        except csv.Error as e:
            raise DataError(f"unreadable record ({e})", path, start, "line") from None
        except UnicodeDecodeError as e:
            raise DataError(f"not {e.encoding} text ({e.reason})", path, start, "line") from None


def required(row: dict, key: str, path: Path, lineno: int) -> str:
    v = row.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        raise DataError("missing or empty", path, lineno, key)
    return str(v).strip()


def to_float(value, path: Path, lineno: int, fieldname: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"expected a number, got {value!r}", path, lineno, fieldname) from None


def to_int(value, path: Path, lineno: int, fieldname: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise DataError(f"expected an integer timestamp, got {value!r}", path, lineno,
                        fieldname) from None
    if f != f or f in (float("inf"), float("-inf")):
        raise DataError(f"expected an integer timestamp, got {value!r}", path, lineno, fieldname)
    return int(f)


# ----------------------------------------------------------------------------------------------
# text

_SPACE = re.compile(r"\s+")
_PRICE = re.compile(r"^\$?\s*(\d[\d,]*(?:\.\d+)?)$")


def clean_text(value) -> str | None:
    """Unescape HTML entities and collapse whitespace (newlines, tabs) to single spaces."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value if v not in (None, ""))
    text = _SPACE.sub(" ", html.unescape(str(value))).strip()
    return text or None


def parse_price(value) -> float | None:
    """'$12.99' or 12.99 -> 12.99; ranges ('$5 - $9'), blanks and prose -> None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if value == value and value >= 0 else None
    m = _PRICE.match(str(value).strip())
    return float(m.group(1).replace(",", "")) if m else None


def unique(values) -> list[str]:
    """Cleaned, non-empty strings in first-seen order without repeats."""
    out: list[str] = []
    for v in values:
        t = clean_text(v)
        if t and t not in out:
            out.append(t)
    return out


def split_token_seq(value: str) -> list[str]:
    """A RecBole token_seq cell as a list.

    Plain cells are space-separated tokens ('Action Comedy'); some exports instead hold quoted
    Python strings ("'Beauty', 'Skin Care'") so multi-word tokens survive, read as literals.
    """
    value = (value or "").strip()
    if not value:
        return []
    if value[0] in "'\"":
        try:
            parsed = ast.literal_eval("[" + value + "]")
            if all(isinstance(p, str) for p in parsed):
                return unique(parsed)
        except (ValueError, SyntaxError):
            pass
    return unique(value.split())


# ----------------------------------------------------------------------------------------------
# interactions


def dedupe_keep_earliest(inters: list[Interaction]) -> tuple[list[Interaction], int]:
    """Drop repeated (user, item) pairs, keeping the earliest (ties: the first in file order)."""
    best: dict[tuple[str, str], int] = {}
    for i, x in enumerate(inters):
        key = (x.user_id, x.item_id)
        j = best.get(key)
        if j is None or (x.timestamp or 0) < (inters[j].timestamp or 0):
            best[key] = i
    keep = sorted(best.values())
    return [inters[i] for i in keep], len(inters) - len(keep)


def k_core(inters: list[Interaction], k: int) -> list[Interaction]:
    """Repeatedly drop users and items with fewer than k interactions until none remain (k<=1: no-op)."""
    if k <= 1:
        return inters
    while True:
        ucount: dict[str, int] = {}
        icount: dict[str, int] = {}
        for x in inters:
            ucount[x.user_id] = ucount.get(x.user_id, 0) + 1
            icount[x.item_id] = icount.get(x.item_id, 0) + 1
        kept = [x for x in inters if ucount[x.user_id] >= k and icount[x.item_id] >= k]
        if len(kept) == len(inters):
            return kept
        inters = kept


def finish(items: dict[str, Item], inters: list[Interaction], users: dict[str, dict],
           source: str, min_count: int = 0) -> Converted:
    """Apply the k-core filter, then keep only items and users that still have interactions."""
    inters = k_core(inters, min_count)
    if not inters:
        why = f" after the --min-count {min_count} filter" if min_count > 1 else ""
        raise DataError(f"no interactions left{why}", source, field="interactions")
    used_items = {x.item_id for x in inters}
    used_users = {x.user_id for x in inters}
    kept_items = [it for iid, it in items.items() if iid in used_items]
    kept_users = {u: a for u, a in users.items() if u in used_users}
    return Converted(kept_items, inters, kept_users, source)
