"""Converter for RecBole atomic files: `<name>.inter`, `<name>.item`, `<name>.user` in one folder.

Each file is tab-separated with a typed header (`user_id:token  item_id:token  rating:float ...`).
Columns map onto the normalized schema by name:

    .inter  user_id, item_id, rating, timestamp, review|review_text, summary
    .item   item_id; title|movie_title; categories|class|genre|genres (token_seq); brand; price;
            description; release_year (appended to the title as "Title (1995)", as MovieLens writes it)
    .user   user_id; every other column becomes a user attribute (float columns as numbers)

Other columns are ignored. Without a timestamp column the row's position in the user's history is used.
"""

from __future__ import annotations

from pathlib import Path

from p5x.errors import DataError
from p5x.schema import Interaction, Item

from .common import (Converted, clean_text, finish, iter_tsv, parse_price, require_dir,
                     split_token_seq, to_float, to_int)

TITLE_COLS = ("title", "movie_title")
CATEGORY_COLS = ("categories", "class", "genre", "genres")
REVIEW_COLS = ("review", "review_text")


def read_atomic(path: Path, encoding: str = "utf-8"):
    """(line number, {column name: raw string}, {column name: type}) for each record of an atomic file."""
    rows = iter_tsv(path, encoding)
    header = next(rows, None)
    if header is None:
        raise DataError("empty file (no header)", path, 1, "header")
    names, types = [], {}
    for cell in header[1]:
        name, _, typ = cell.strip().partition(":")
        if not name:
            raise DataError(f"bad header cell {cell!r}", path, 1, "header")
        names.append(name)
        types[name] = typ or "token"
    for lineno, row in rows:
        if len(row) != len(names):
            col = names[min(len(row), len(names) - 1)]
            raise DataError(f"{len(row)} columns, header declares {len(names)}", path, lineno, col)
        yield lineno, dict(zip(names, row)), types


def _pick(row: dict, names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in row and row[n].strip():
            return row[n]
    return None


def read_item_file(path: Path, encoding: str = "utf-8") -> dict[str, Item]:
    """Items of a RecBole .item file, keyed by raw item id; a repeated id is an error."""
    items: dict[str, Item] = {}
    for lineno, row, types in read_atomic(path, encoding):
        iid = row.get("item_id", "").strip()
        if not iid:
            raise DataError("missing or empty", path, lineno, "item_id")
        if iid in items:
            raise DataError(f"duplicate item id {iid!r}", path, lineno, "item_id")
        title = clean_text(_pick(row, TITLE_COLS))
        year = (row.get("release_year") or "").strip()
        if title and year and not title.endswith(f"({year})"):
            title = f"{title} ({year})"
        cats = _pick(row, CATEGORY_COLS)
        price = row.get("price")
        if price is not None and price.strip():
            to_float(price, path, lineno, "price")  # a non-number is a malformed line, not a null
        items[iid] = Item(iid, title, clean_text(row.get("brand")),
                          split_token_seq(cats) if cats else [], parse_price(price),
                          clean_text(row.get("description")))
    return items


def read_inter_file(path: Path, known_items: dict | None = None) -> list[Interaction]:
    """Interactions in file order; with `known_items`, an item id not in it is a dangling-id error."""
    inters: list[Interaction] = []
    position: dict[str, int] = {}
    for lineno, row, _ in read_atomic(path):
        for key in ("user_id", "item_id"):
            if not row.get(key, "").strip():
                raise DataError("missing or empty", path, lineno, key)
        uid, iid = row["user_id"].strip(), row["item_id"].strip()
        if known_items is not None and iid not in known_items:
            raise DataError(f"item {iid!r} is not in the item file", path, lineno, "item_id")
        if "timestamp" in row:
            ts = to_int(row["timestamp"], path, lineno, "timestamp")
        else:
            ts = position.get(uid, 0)
            position[uid] = ts + 1
        inters.append(Interaction(uid, iid, to_float(row.get("rating"), path, lineno, "rating"), ts,
                                  clean_text(_pick(row, REVIEW_COLS)), clean_text(row.get("summary"))))
    return inters


def read_user_file(path: Path) -> dict[str, dict]:
    users: dict[str, dict] = {}
    for lineno, row, types in read_atomic(path):
        uid = row.get("user_id", "").strip()
        if not uid:
            raise DataError("missing or empty", path, lineno, "user_id")
        if uid in users:
            raise DataError(f"duplicate user id {uid!r}", path, lineno, "user_id")
        attrs = {}
        for k, v in row.items():
            if k == "user_id" or not v.strip():
                continue
            attrs[k] = to_float(v, path, lineno, k) if types[k] == "float" else v.strip()
        users[uid] = attrs
    return users


def _find(folder: Path, ext: str) -> Path | None:
    found = sorted(folder.glob(f"*.{ext}"))
    if len(found) > 1:
        raise DataError(f"several .{ext} files ({', '.join(p.name for p in found)})", folder)
    return found[0] if found else None


def convert(input: Path, min_count: int = 0, **_) -> Converted:
    folder = require_dir(Path(input))
    inter_path = _find(folder, "inter")
    if inter_path is None:
        raise DataError("file not found (no <name>.inter atomic file)", folder)
    item_path, user_path = _find(folder, "item"), _find(folder, "user")
    meta = read_item_file(item_path) if item_path else None
    inters = read_inter_file(inter_path, meta)
    users = read_user_file(user_path) if user_path else {}
    items: dict[str, Item] = {}
    for x in inters:
        if x.item_id not in items:
            items[x.item_id] = (meta or {}).get(x.item_id) or Item(x.item_id)
    return finish(items, inters, users, str(inter_path), min_count)
