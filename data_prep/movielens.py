"""Converter for the original MovieLens releases: ml-100k and ml-1m (auto-detected from the files).

ml-100k: u.data (user \t item \t rating \t unix time), u.item ('|'-separated: id, title with year,
release date, video date, IMDb URL, 19 genre flags), u.user (id|age|gender|occupation|zip).
ml-1m: ratings.dat (UserID::MovieID::Rating::Timestamp), movies.dat (MovieID::Title::Genre|Genre),
users.dat (UserID::Gender::Age::Occupation::Zip). Both are latin-1.

Titles keep MovieLens' own "Title (1995)" form; genres become categories (ml-100k's "unknown" flag
is not a genre and is dropped). User attributes are kept as strings except age (a number).
MovieLens data may not be redistributed: never commit its rows (tests use invented fixtures).
"""

from __future__ import annotations

from pathlib import Path

from p5x.errors import DataError
from p5x.schema import Interaction, Item

from .common import (Converted, clean_text, finish, numbered_lines, require_dir, require_file,
                     to_float, to_int)

ENCODING = "latin-1"
# the genre order of ml-100k's u.genre, used when that file is absent
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")


def _lines(path: Path, sep: str, names: tuple[str, ...], at_least: int | None = None):
    """(line number, {name: value}) per non-blank line; too few fields is a malformed line."""
    need = len(names) if at_least is None else at_least
    with open(require_file(path), encoding=ENCODING) as f:
        for lineno, line in numbered_lines(f, path):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split(sep)
            if len(parts) < need:
                raise DataError(f"{len(parts)} fields, expected {need}", path, lineno,
                                names[min(len(parts), len(names) - 1)])
            yield lineno, dict(zip(names, parts)), parts


def _ratings(path: Path, sep: str, known: dict[str, Item]) -> list[Interaction]:
    inters = []
    for lineno, r, _ in _lines(path, sep, ("user_id", "item_id", "rating", "timestamp")):
        uid, iid = r["user_id"].strip(), r["item_id"].strip()
        if not uid or not iid:
            raise DataError("missing or empty", path, lineno, "user_id" if not uid else "item_id")
        if iid not in known:
            raise DataError(f"movie {iid!r} is not in the movie file", path, lineno, "item_id")
        inters.append(Interaction(uid, iid, to_float(r["rating"], path, lineno, "rating"),
                                  to_int(r["timestamp"], path, lineno, "timestamp")))
    return inters


def _add_item(items: dict, iid: str, item: Item, path: Path, lineno: int) -> None:
    if not iid:
        raise DataError("missing or empty", path, lineno, "item_id")
    if iid in items:
        raise DataError(f"duplicate item id {iid!r}", path, lineno, "item_id")
    items[iid] = item


def _genres_100k(folder: Path) -> tuple[str, ...]:
    path = folder / "u.genre"
    if not path.is_file():
        return GENRES_100K
    names = [line.split("|")[0] for line in open(path, encoding=ENCODING) if line.strip()]
    return tuple(names)


def _convert_100k(folder: Path, min_count: int) -> Converted:
    genres = _genres_100k(folder)
    path = folder / "u.item"
    items: dict[str, Item] = {}
    for lineno, r, parts in _lines(path, "|", ("item_id", "title"), at_least=5 + len(genres)):
        flags = parts[5:5 + len(genres)]
        cats = [g for g, f in zip(genres, flags) if f.strip() == "1" and g != "unknown"]
        iid = r["item_id"].strip()
        _add_item(items, iid, Item(iid, clean_text(r["title"]), categories=cats), path, lineno)
    users = {}
    upath = folder / "u.user"
    if upath.is_file():
        for lineno, r, _ in _lines(upath, "|", ("user_id", "age", "gender", "occupation", "zip_code")):
            users[r["user_id"].strip()] = {"age": to_float(r["age"], upath, lineno, "age"),
                                           "gender": r["gender"], "occupation": r["occupation"],
                                           "zip_code": r["zip_code"]}
    inters = _ratings(folder / "u.data", "\t", items)
    return finish(items, inters, users, str(folder / "u.data"), min_count)


def _convert_1m(folder: Path, min_count: int) -> Converted:
    path = folder / "movies.dat"
    items: dict[str, Item] = {}
    for lineno, r, _ in _lines(path, "::", ("item_id", "title", "genres")):
        iid = r["item_id"].strip()
        cats = [g for g in r["genres"].split("|") if g.strip()]
        _add_item(items, iid, Item(iid, clean_text(r["title"]), categories=cats), path, lineno)
    users = {}
    upath = folder / "users.dat"
    if upath.is_file():
        for lineno, r, _ in _lines(upath, "::", ("user_id", "gender", "age", "occupation", "zip_code")):
            users[r["user_id"].strip()] = {"gender": r["gender"],
                                           "age": to_float(r["age"], upath, lineno, "age"),
                                           "occupation": r["occupation"], "zip_code": r["zip_code"]}
    inters = _ratings(folder / "ratings.dat", "::", items)
    return finish(items, inters, users, str(folder / "ratings.dat"), min_count)


def convert(input: Path, min_count: int = 0, **_) -> Converted:
    folder = require_dir(Path(input))
    if (folder / "u.data").is_file():
        return _convert_100k(folder, min_count)
    if (folder / "ratings.dat").is_file():
        return _convert_1m(folder, min_count)
    raise DataError("file not found (neither ml-100k's u.data nor ml-1m's ratings.dat)", folder)
