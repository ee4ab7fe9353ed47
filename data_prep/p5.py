"""Converter for P5's preprocessed layout (sequential_data.txt + datamaps.json [+ item metadata]).

P5 numbered users and items 1, 2, 3... in the order users met them, so an item's number says when
it first appeared and the test item is often max(history)+1. That numbering leaks the answer:
this converter maps every number back to its raw id (ASIN, business_id, reviewerID) through
datamaps.json and drops the numbers entirely. There are no times in these files, so the timestamp
is the position in the user's sequence (0, 1, 2, ...).

Item text comes from an optional metadata file, found in the folder or given with --item-file:
- a RecBole atomic `.item` file keyed by raw id (title, categories, price, brand, ...), or
- a JSON object keyed by P5 item number minus one ({"0": {"title", "description"}}), as for Yelp.
"""

from __future__ import annotations

import json
from pathlib import Path

from p5x.errors import DataError
from p5x.schema import Interaction, Item

from .common import (Converted, clean_text, first_existing, finish, numbered_lines, require_dir,
                     require_file)
from .recbole import read_item_file


def add_arguments(p) -> None:
    p.add_argument("--item-file", type=Path, default=None,
                   help="item metadata: a RecBole .item file keyed by raw id, or a JSON file keyed by "
                        "P5 item number - 1 (default: the single *.item or *.item.json in --input)")


def _load_maps(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    try:
        maps = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg})", path, e.lineno, "datamaps") from None
    for key in ("id2item", "id2user"):
        if not isinstance(maps.get(key), dict):
            raise DataError("missing or not an object", path, field=key)
    return ({str(k): str(v) for k, v in maps["id2user"].items()},
            {str(k): str(v) for k, v in maps["id2item"].items()})


def _read_sequences(path: Path, id2user: dict, id2item: dict) -> list[Interaction]:
    inters: list[Interaction] = []
    seen_users: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in numbered_lines(f, path):
            nums = line.split()
            if not nums:
                continue
            if nums[0] not in id2user:
                raise DataError(f"user number {nums[0]!r} is not in datamaps.json id2user", path,
                                lineno, "user")
            user = id2user[nums[0]]
            if user in seen_users:
                raise DataError(f"user {user!r} has a second sequence line", path, lineno, "user")
            seen_users.add(user)
            for pos, num in enumerate(nums[1:]):
                if num not in id2item:
                    raise DataError(f"item number {num!r} is not in datamaps.json id2item", path,
                                    lineno, "item")
                inters.append(Interaction(user, id2item[num], timestamp=pos))
    return inters


def _find_item_file(folder: Path) -> Path | None:
    found = sorted(folder.glob("*.item")) + sorted(folder.glob("*.item.json"))
    if len(found) > 1:
        raise DataError(f"several item files ({', '.join(p.name for p in found)}); pick one with "
                        "--item-file", folder)
    return found[0] if found else None


def _read_json_items(path: Path, id2item: dict) -> dict[str, Item]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg})", path, e.lineno, "items") from None
    if not isinstance(data, dict):
        raise DataError("expected an object keyed by item number", path)
    items: dict[str, Item] = {}
    for key, rec in data.items():
        # keys are P5 item numbers minus one (0-based), as LETTER and TIGER-style exports write them
        try:
            num = str(int(key) + 1)
        except ValueError:
            raise DataError(f"key {key!r} is not an item number", path, field="item") from None
        if num not in id2item:
            raise DataError(f"item number {num} (key {key!r}) is not in datamaps.json", path,
                            field="item")
        if not isinstance(rec, dict):
            raise DataError(f"entry {key!r} is not an object", path, field="item")
        items[id2item[num]] = Item(id2item[num], clean_text(rec.get("title")),
                                   description=clean_text(rec.get("description")))
    return items


def convert(input: Path, item_file: Path | None = None, min_count: int = 0, **_) -> Converted:
    folder = require_dir(Path(input))
    seq = first_existing(folder, ("sequential_data.txt", "sequential.txt"))
    id2user, id2item = _load_maps(require_file(folder / "datamaps.json"))
    inters = _read_sequences(seq, id2user, id2item)

    meta_path = Path(item_file) if item_file else _find_item_file(folder)
    meta: dict[str, Item] = {}
    if meta_path is not None:
        require_file(meta_path)
        meta = (_read_json_items(meta_path, id2item) if meta_path.suffix == ".json"
                else read_item_file(meta_path))
    items: dict[str, Item] = {}
    for x in inters:
        if x.item_id not in items:
            items[x.item_id] = meta.get(x.item_id) or Item(x.item_id)
    return finish(items, inters, {}, str(seq), min_count)
