"""Tests for p5x.indexing: id text round trips, prefix-freeness, persistence, and no numbering leak."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p5x.errors import CheckpointError, ConfigError
from p5x.indexing import ID_LEVELS, METHODS, PIECE_RE, ItemIndex, build_index, build_user_index, digit_base, number_of
from p5x.schema import Dataset, Interaction, Item
from p5x.split import time_split


@pytest.fixture(scope="module")
def toy_split(toy_ds):
    return time_split(toy_ds)


@pytest.fixture(scope="module", params=METHODS)
def toy_index(request, toy_ds, toy_split):
    return build_index(toy_ds, toy_split, request.param, seed=0, n_clusters=4)


def test_every_item_round_trips_and_codes_are_unique(toy_ds, toy_index):
    assert set(toy_index.codes) == set(toy_ds.items)
    texts = [toy_index.text(i) for i in toy_ds.items]
    assert len(set(texts)) == len(texts)
    for raw in toy_ds.items:
        assert toy_index.lookup(toy_index.text(raw)) == raw
    assert toy_index.lookup("<i0_1>hello") is None and toy_index.lookup("") is None


def test_pieces_are_well_formed_and_codes_prefix_free(toy_index):
    for code in toy_index.codes.values():
        for level, piece in enumerate(code):
            m = PIECE_RE.fullmatch(piece)
            assert m and m.group(1) == "i" and int(m.group(2)) == level
    codes = sorted(toy_index.codes.values())
    for a, b in zip(codes, codes[1:]):  # in sorted order a prefix sits right before its extensions
        assert b[:len(a)] != a
    assert set(toy_index.pieces()) == {p for c in toy_index.codes.values() for p in c}


def test_random_digits_follow_the_catalogue_size(toy_ds, toy_split):
    ix = build_index(toy_ds, toy_split, "random")
    n = len(toy_ds.items)
    base = digit_base(n)
    assert base ** 3 >= n > (base - 1) ** 3 and digit_base(12101) == 23 and digit_base(8) == 2
    numbers = sorted(number_of(c, base) for c in ix.codes.values())
    assert numbers == list(range(n))
    assert {len(c) for c in ix.codes.values()} == {ID_LEVELS}
    assert all(int(PIECE_RE.fullmatch(p).group(3)) < base for c in ix.codes.values() for p in c)


def test_atomic_is_the_random_numbering_one_token_each(toy_ds, toy_split):
    ix = build_index(toy_ds, toy_split, "atomic", seed=3)
    rnd = build_index(toy_ds, toy_split, "random", seed=3)
    n = len(toy_ds.items)
    assert {len(c) for c in ix.codes.values()} == {1} and ix.method == "atomic"
    assert sorted(int(PIECE_RE.fullmatch(c[0]).group(3)) for c in ix.codes.values()) == list(range(n))
    # the same seeded permutation as random: item k's atomic number is its random number
    assert all(number_of(ix.codes[i], n) == number_of(rnd.codes[i], digit_base(n)) for i in ix.codes)
    assert len(ix.pieces()) == n  # one new token per item


def test_save_load_round_trip_and_bad_files(tmp_path, toy_index):
    path = tmp_path / "sub" / "item_index.json"
    toy_index.save(path)
    back = ItemIndex.load(path)
    assert back == toy_index and back.text(next(iter(back.codes))) == toy_index.text(next(iter(back.codes)))
    assert [p.name for p in path.parent.iterdir()] == ["item_index.json"]  # no temp file left
    d = json.loads(path.read_text())
    d["codes"][next(iter(d["codes"]))] = ["<x0_1>"]
    path.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="codes"):
        ItemIndex.load(path)
    path.write_text("{nope")
    with pytest.raises(CheckpointError, match="malformed"):
        ItemIndex.load(path)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_by_seed(toy_ds, toy_split, method):
    a = build_index(toy_ds, toy_split, method, seed=1, n_clusters=4)
    assert a.codes == build_index(toy_ds, toy_split, method, seed=1, n_clusters=4).codes
    if method != "collaborative":  # clustering of a clear-cut graph may not depend on the seed
        assert a.codes != build_index(toy_ds, toy_split, method, seed=2).codes


def test_user_index(toy_ds):
    ux = build_user_index(toy_ds, seed=0)
    assert ux.kind == "user" and set(ux.codes) == set(toy_ds.users)
    assert all(p.startswith("<u") for p in ux.pieces())
    assert all(ux.lookup(ux.text(u)) == u for u in toy_ds.users)


def test_unknown_method_is_an_error(toy_ds, toy_split):
    with pytest.raises(ConfigError, match="did you mean collaborative"):
        build_index(toy_ds, toy_split, "colaborative")


def test_collaborative_groups_co_occurring_items(toy_ds, toy_split):
    # the toy's cycles never share users, so top-level clusters must not mix brands (= cycles)
    ix = build_index(toy_ds, toy_split, "collaborative", n_clusters=4)
    brands: dict[str, set] = {}
    for raw, code in ix.codes.items():
        brands.setdefault(code[0], set()).add(toy_ds.items[raw].brand)
    assert all(len(b) == 1 for b in brands.values())


def test_collaborative_handles_isolated_and_tiny_catalogues():
    items = {f"i{k}": Item(f"i{k}") for k in range(40)}  # 36 items never interacted with
    inters = [Interaction("u", f"i{k}", None, k) for k in range(4)]
    ds = Dataset("t", items, {"u": {}}, inters)
    ix = build_index(ds, time_split(ds), "collaborative", n_clusters=3)
    assert len({ix.text(i) for i in items}) == 40
    codes = sorted(ix.codes.values())
    assert all(b[:len(a)] != a for a, b in zip(codes, codes[1:]))


def test_sequential_numbers_come_from_training_only(toy_ds, toy_split):
    ix = build_index(toy_ds, toy_split, "sequential")
    train_items = toy_split.train_items()
    num = {i: number_of(c, digit_base(len(ix))) for i, c in ix.codes.items()}
    assert max(num[i] for i in train_items) == len(train_items) - 1
    assert all(num[i] >= len(train_items) for i in set(toy_ds.items) - train_items)


# ----------------------------------------------------------------------------------------------
# the P5 numbering leak (docs/DESIGN.md, "Evaluation protocol" 1)


def p5_style_dataset(n_users=300, n_items=300, seed=0):
    """Popularity-driven histories with no order signal; raw ids numbered by first appearance."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(n_items) + 10)
    first: dict[int, str] = {}
    inters = []
    for u in range(n_users):
        for t, k in enumerate(rng.choice(n_items, int(rng.integers(5, 11)), replace=False, p=p / p.sum())):
            raw = first.setdefault(int(k), str(len(first) + 1))
            inters.append(Interaction(f"u{u}", raw, None, t))
    items = {str(i + 1): Item(str(i + 1)) for i in range(n_items)}
    ds = Dataset("leak", items, {f"u{u}": {} for u in range(n_users)}, inters)
    return ds, time_split(ds)


def code_numbers(ix: ItemIndex) -> dict[str, int]:
    """Each item's rank in the (numeric, level by level) order of codes: its 'number'."""
    def key(code):
        return tuple(int(PIECE_RE.fullmatch(p).group(3)) for p in code)
    return {raw: n for n, raw in enumerate(sorted(ix.codes, key=lambda r: key(ix.codes[r])))}


def next_number_rule(numbers: dict[str, int], split, k=10) -> tuple[float, float]:
    """HR@k of 'rank unseen items by closeness to max(history number)+1', and its chance rate."""
    ids = list(numbers)
    nums = np.array([numbers[i] for i in ids])
    hits = chance = 0.0
    for u, target in split.test.items():
        seen = {x.item_id for x in split.history(u, "test")}
        nxt = max(numbers[i] for i in seen) + 1
        order = np.lexsort((nums, np.abs(nums - nxt)))
        top = [ids[j] for j in order if ids[j] not in seen][:k]
        hits += target.item_id in top
        chance += k / (len(ids) - len(seen))
    return hits / len(split.test), chance / len(split.test)


def test_first_appearance_numbering_leaks_and_ours_do_not():
    ds, split = p5_style_dataset()
    naive, chance = next_number_rule({i: int(i) for i in ds.items}, split)
    assert naive > chance + 0.06, "the planted leak should show, else this test proves nothing"
    for method in METHODS:
        hr, _ = next_number_rule(code_numbers(build_index(ds, split, method, seed=0)), split)
        assert hr < chance + 0.035, f"{method}: next-number rule HR@10 {hr:.3f} vs chance {chance:.3f}"


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(toy_ds, tmp_path, monkeypatch):
    """ItemIndex.save (like every p5x writer, through p5x.paths.atomic_output) renames a finished temp
    file onto the target: a write that raises keeps the previous file whole and leaves nothing beside it."""
    import stat

    split = time_split(toy_ds)
    ix = build_index(toy_ds, split, "random", seed=0)
    path = tmp_path / "sub" / "item_index.json"
    ix.save(path)
    before = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and ItemIndex.load(path) == ix

    def half_then_full(self, text, *a, **k):  # the disk fills halfway through the write
        with open(self, "w", encoding="utf-8") as f:
            f.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError, match="disk full"):
        build_index(toy_ds, split, "random", seed=1).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["item_index.json"]
