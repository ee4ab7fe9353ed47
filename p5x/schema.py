"""The normalized dataset directory every source is converted into, and its reader and writer.

A normalized dataset is a directory of plain files that a person can read and write by hand:

    items.jsonl         one item per line:  {"item_id", "title", "brand", "categories", "price", "description"}
    users.jsonl         one user per line:  {"user_id", ...free attributes (age, gender, ...)}
    interactions.jsonl  one event per line: {"user_id", "item_id", "rating", "timestamp", "review", "summary"}
    manifest.json       name, source format, counts, which fields are present, and SHA-256 hashes

Ids are strings. Optional fields are JSON null when unknown. Interactions are stored grouped by user
and in time order within a user (ties keep file order); that order *is* the timeline the split uses.
`timestamp` is an integer (Unix seconds, or the position in the sequence when a source has no times).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import DataError

SCHEMA_VERSION = 1
ITEM_TEXT_FIELDS = ("title", "brand", "categories", "price", "description")
INTERACTION_FIELDS = ("rating", "timestamp", "review", "summary")
FILES = ("items.jsonl", "users.jsonl", "interactions.jsonl")


@dataclass
class Item:
    item_id: str
    title: str | None = None
    brand: str | None = None
    categories: list[str] = field(default_factory=list)
    price: float | None = None
    description: str | None = None


@dataclass
class Interaction:
    user_id: str
    item_id: str
    rating: float | None = None
    timestamp: int | None = None
    review: str | None = None
    summary: str | None = None


@dataclass
class Dataset:
    """An in-memory normalized dataset. `interactions` is grouped by user, time-ordered within a user."""

    name: str
    items: dict[str, Item]
    users: dict[str, dict]
    interactions: list[Interaction]
    manifest: dict = field(default_factory=dict)
    root: Path | None = None

    @property
    def data_hash(self) -> str:
        return self.manifest.get("data_hash", "")

    def has(self, fieldname: str) -> bool:
        """Whether any record carries this optional field (e.g. 'rating', 'review', 'title')."""
        return bool(self.manifest.get("fields", {}).get(fieldname, False))

    def by_user(self) -> dict[str, list[Interaction]]:
        """user_id -> that user's interactions in time order (users in file order)."""
        out: dict[str, list[Interaction]] = {}
        for it in self.interactions:
            out.setdefault(it.user_id, []).append(it)
        return out


# ----------------------------------------------------------------------------------------------
# reading


def _read_jsonl(path: Path, required: tuple[str, ...]):
    if not path.exists():
        raise DataError("file not found", path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON ({e.msg})", path, lineno) from None
            if not isinstance(row, dict):
                raise DataError("expected a JSON object", path, lineno)
            for key in required:
                if row.get(key) in (None, ""):
                    raise DataError("missing or empty", path, lineno, key)
            yield lineno, row


def load_dataset(root: str | Path) -> Dataset:
    """Read and validate a normalized dataset directory."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a normalized dataset directory (missing)", root)
    mpath = root / "manifest.json"
    if not mpath.exists():
        raise DataError("file not found (is this a normalized dataset? run `python -m data_prep`)", mpath)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg})", mpath, e.lineno) from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"unsupported schema_version {manifest.get('schema_version')!r}", mpath,
                        field="schema_version")

    items: dict[str, Item] = {}
    p = root / "items.jsonl"
    for lineno, row in _read_jsonl(p, ("item_id",)):
        iid = str(row["item_id"])
        if iid in items:
            raise DataError(f"duplicate item id {iid!r}", p, lineno, "item_id")
        cats = row.get("categories") or []
        if not isinstance(cats, list):
            raise DataError("expected a list of strings", p, lineno, "categories")
        price = row.get("price")
        if price is not None and not isinstance(price, (int, float)):
            raise DataError(f"expected a number, got {price!r}", p, lineno, "price")
        items[iid] = Item(iid, row.get("title"), row.get("brand"), [str(c) for c in cats],
                          None if price is None else float(price), row.get("description"))

    users: dict[str, dict] = {}
    p = root / "users.jsonl"
    for lineno, row in _read_jsonl(p, ("user_id",)):
        uid = str(row["user_id"])
        if uid in users:
            raise DataError(f"duplicate user id {uid!r}", p, lineno, "user_id")
        users[uid] = {k: v for k, v in row.items() if k != "user_id"}

    inters: list[Interaction] = []
    last_seen: dict[str, int | None] = {}  # user -> last timestamp; None once the user's block ended
    prev_user = None
    p = root / "interactions.jsonl"
    for lineno, row in _read_jsonl(p, ("user_id", "item_id")):
        uid, iid = str(row["user_id"]), str(row["item_id"])
        if uid not in users:
            raise DataError(f"unknown user {uid!r} (not in users.jsonl)", p, lineno, "user_id")
        if iid not in items:
            raise DataError(f"unknown item {iid!r} (not in items.jsonl)", p, lineno, "item_id")
        rating, ts = row.get("rating"), row.get("timestamp")
        if rating is not None and not isinstance(rating, (int, float)):
            raise DataError(f"expected a number, got {rating!r}", p, lineno, "rating")
        if ts is not None and not isinstance(ts, int):
            raise DataError(f"expected an integer, got {ts!r}", p, lineno, "timestamp")
        # the file order is the timeline the split cuts: a user's rows must be contiguous and in time order
        if uid != prev_user:
            if uid in last_seen:
                raise DataError(f"user {uid!r} appears again after other users (interactions must be "
                                "grouped by user)", p, lineno, "user_id")
            last_seen[uid] = None
            prev_user = uid
        if ts is not None:
            if last_seen[uid] is not None and ts < last_seen[uid]:
                raise DataError(f"timestamp {ts} is earlier than the user's previous one (interactions "
                                "must be in time order within a user)", p, lineno, "timestamp")
            last_seen[uid] = ts
        inters.append(Interaction(uid, iid, None if rating is None else float(rating), ts,
                                  row.get("review"), row.get("summary")))
    if not inters:
        raise DataError("no interactions", p)
    return Dataset(manifest.get("name", root.name), items, users, inters, manifest, root)


# ----------------------------------------------------------------------------------------------
# writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _present(values: Iterable) -> bool:
    return any(v not in (None, "", []) for v in values)


def write_dataset(out_dir: str | Path, name: str, source_format: str, items: Iterable[Item],
                  interactions: Iterable[Interaction], users: dict[str, dict] | None = None,
                  source: str = "") -> Dataset:
    """Validate and write a normalized dataset atomically (temp dir, then rename).

    Interactions are re-grouped by user (users in order of first appearance) and sorted by
    timestamp within a user, ties keeping input order. Users missing from `users` are created
    with no attributes. Dangling item ids, duplicate item ids and an empty result are errors.
    """
    out_dir = Path(out_dir)
    items = list(items)
    item_map: dict[str, Item] = {}
    for it in items:
        if it.item_id in item_map:
            raise DataError(f"duplicate item id {it.item_id!r}", source or name, field="item_id")
        item_map[it.item_id] = it
    inters = list(interactions)
    if not inters:
        raise DataError("conversion produced no interactions", source or name)
    if not item_map:
        raise DataError("conversion produced no items", source or name)
    users = dict(users or {})
    grouped: dict[str, list[Interaction]] = {}
    for x in inters:
        if x.item_id not in item_map:
            raise DataError(f"interaction refers to unknown item {x.item_id!r}", source or name,
                            field="item_id")
        grouped.setdefault(x.user_id, []).append(x)
        users.setdefault(x.user_id, {})
    ordered: list[Interaction] = []
    for uid, xs in grouped.items():
        # stable sort: ties (and missing timestamps) keep input order
        xs = sorted(xs, key=lambda r: (r.timestamp if r.timestamp is not None else 0))
        ordered.extend(xs)
    user_ids = list(grouped) + [u for u in users if u not in grouped]

    fields = {f: _present(getattr(x, f) for x in ordered) for f in INTERACTION_FIELDS}
    fields.update({f: _present(getattr(i, f) for i in items) for f in ITEM_TEXT_FIELDS})

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        # mkdtemp makes the folder private (0700); the dataset should get ordinary permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
            for it in items:
                f.write(json.dumps(asdict(it), ensure_ascii=False) + "\n")
        with open(tmp / "users.jsonl", "w", encoding="utf-8") as f:
            for uid in user_ids:
                f.write(json.dumps({"user_id": uid, **users[uid]}, ensure_ascii=False) + "\n")
        with open(tmp / "interactions.jsonl", "w", encoding="utf-8") as f:
            for x in ordered:
                f.write(json.dumps(asdict(x), ensure_ascii=False) + "\n")
        hashes = {fn: _sha256(tmp / fn) for fn in FILES}
        data_hash = hashlib.sha256("".join(hashes[fn] for fn in FILES).encode()).hexdigest()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "source_format": source_format,
            "source": source,
            "counts": {"users": len(user_ids), "items": len(items), "interactions": len(ordered)},
            "fields": fields,
            "hashes": hashes,
            "data_hash": data_hash,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Dataset(name, item_map, {u: users[u] for u in user_ids}, ordered, manifest, out_dir)
