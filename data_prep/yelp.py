"""Converter for the Yelp open dataset (JSON lines): business and review files in one folder.

business (yelp_academic_dataset_business.json or business.json): business_id -> item_id,
name -> title, categories ("Pizza, Italian" comma string or list) -> categories.
review (yelp_academic_dataset_review.json or review.json): user_id, business_id -> item_id,
stars -> rating, text -> review, date "YYYY-MM-DD HH:MM:SS" (UTC) -> Unix timestamp.
A user who reviewed the same business twice keeps the earliest review (ties: first in the file).
A review of a business missing from the business file is a dangling-id error.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from p5x.errors import DataError
from p5x.schema import Interaction, Item

from .common import (Converted, clean_text, dedupe_keep_earliest, finish, first_existing,
                     iter_records, require_dir, required, to_float, unique)

BUSINESS = ("yelp_academic_dataset_business.json", "business.json")
REVIEW = ("yelp_academic_dataset_review.json", "review.json")


def _date(value, path: Path, lineno: int) -> int:
    text = str(value or "").strip()
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return int(datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            pass
    raise DataError(f"expected 'YYYY-MM-DD HH:MM:SS', got {value!r}", path, lineno, "date")


def read_businesses(path: Path) -> dict[str, Item]:
    items: dict[str, Item] = {}
    for lineno, row in iter_records(path):
        bid = required(row, "business_id", path, lineno)
        if bid in items:
            raise DataError(f"duplicate item id {bid!r}", path, lineno, "business_id")
        cats = row.get("categories") or []
        if isinstance(cats, str):
            cats = cats.split(",")
        items[bid] = Item(bid, clean_text(row.get("name")), categories=unique(cats))
    return items


def read_reviews(path: Path, items: dict[str, Item]) -> list[Interaction]:
    inters = []
    for lineno, row in iter_records(path):
        uid = required(row, "user_id", path, lineno)
        bid = required(row, "business_id", path, lineno)
        if bid not in items:
            raise DataError(f"business {bid!r} is not in the business file", path, lineno,
                            "business_id")
        inters.append(Interaction(uid, bid, to_float(row.get("stars"), path, lineno, "stars"),
                                  _date(row.get("date"), path, lineno), clean_text(row.get("text"))))
    return inters


def convert(input: Path, min_count: int = 0, **_) -> Converted:
    folder = require_dir(Path(input))
    items = read_businesses(first_existing(folder, BUSINESS))
    rpath = first_existing(folder, REVIEW)
    inters, dropped = dedupe_keep_earliest(read_reviews(rpath, items))
    if dropped:
        print(f"note: dropped {dropped} repeated (user, business) reviews, keeping the earliest",
              file=sys.stderr)
    return finish(items, inters, {}, str(rpath), min_count)
