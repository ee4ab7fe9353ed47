"""Converter for raw Amazon review dumps (2014 and 2018 releases, 5-core or full) plus optional meta.

Review lines (strict JSON in 2018, Python dict literals in some 2014 files; `.json` or `.json.gz`):
reviewerID -> user_id, asin -> item_id, overall -> rating, reviewText -> review, summary -> summary,
unixReviewTime -> timestamp (falls back to reviewTime "MM DD, YYYY").

Meta lines (meta_*.json[.gz], same line formats): title, brand, price ("$12.99" -> 12.99, anything
else -> null), description (string or list of strings, joined), categories (2014: `categories`, a
list of category paths, flattened; 2018: `category`, a flat list), repeats removed in order.

Rules: a user who reviewed the same item twice keeps only the earliest review (ties: the first in
the file), since a repeated pair would put the same answer on both sides of the split. Items with no
meta line are kept with null text. Meta lines for items nobody reviewed are ignored; a meta line that
repeats an asin is ignored if identical (some dumps repeat lines) and an error otherwise.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from p5x.errors import DataError
from p5x.schema import Interaction, Item

from .common import (Converted, clean_text, dedupe_keep_earliest, finish, iter_records, parse_price,
                     require_file, required, to_float, to_int, unique)


def add_arguments(p) -> None:
    p.add_argument("--meta", type=Path, default=None,
                   help="optional meta_<Category>.json[.gz] file with titles, brands, categories, prices")


def _timestamp(row: dict, path: Path, lineno: int) -> int:
    if row.get("unixReviewTime") not in (None, ""):
        return to_int(row["unixReviewTime"], path, lineno, "unixReviewTime")
    when = row.get("reviewTime")
    if when:
        try:
            d = datetime.strptime(str(when).strip(), "%m %d, %Y").replace(tzinfo=timezone.utc)
            return int(d.timestamp())
        except ValueError:
            raise DataError(f"unreadable date {when!r}", path, lineno, "reviewTime") from None
    raise DataError("missing (no unixReviewTime or reviewTime)", path, lineno, "unixReviewTime")


def read_reviews(path: Path) -> list[Interaction]:
    inters = []
    for lineno, row in iter_records(path):
        inters.append(Interaction(
            required(row, "reviewerID", path, lineno), required(row, "asin", path, lineno),
            to_float(row.get("overall"), path, lineno, "overall"), _timestamp(row, path, lineno),
            clean_text(row.get("reviewText")), clean_text(row.get("summary"))))
    return inters


def _categories(row: dict) -> list[str]:
    cats = row.get("categories")
    if cats is None:
        cats = row.get("category")
    if not isinstance(cats, list):
        return []
    flat = []
    for c in cats:
        flat.extend(c if isinstance(c, list) else [c])
    return unique(flat)


def read_meta(path: Path, wanted: set[str]) -> dict[str, Item]:
    items: dict[str, Item] = {}
    raw: dict[str, dict] = {}
    for lineno, row in iter_records(path):
        asin = required(row, "asin", path, lineno)
        if asin not in wanted:
            continue
        if asin in raw:
            if raw[asin] != row:
                raise DataError(f"duplicate item id {asin!r} with different metadata", path, lineno,
                                "asin")
            continue
        raw[asin] = row
        items[asin] = Item(asin, clean_text(row.get("title")), clean_text(row.get("brand")),
                           _categories(row), parse_price(row.get("price")),
                           clean_text(row.get("description")))
    return items


def convert(input: Path, meta: Path | None = None, min_count: int = 0, **_) -> Converted:
    path = require_file(Path(input), "review file")
    inters, dropped = dedupe_keep_earliest(read_reviews(path))
    if dropped:
        print(f"note: dropped {dropped} repeated (user, item) reviews, keeping the earliest",
              file=sys.stderr)
    wanted = {x.item_id for x in inters}
    info = read_meta(require_file(Path(meta), "meta file"), wanted) if meta else {}
    items = {iid: info.get(iid) or Item(iid) for iid in dict.fromkeys(x.item_id for x in inters)}
    return finish(items, inters, {}, str(path), min_count)
