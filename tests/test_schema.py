"""Tests for the normalized dataset (p5x.schema) and the shared time split (p5x.split)."""

from __future__ import annotations

import hashlib
import json

import pytest

from p5x.errors import DataError
from p5x.schema import Interaction, Item, load_dataset, write_dataset
from p5x.split import MIN_EVAL_LENGTH, time_split


def tiny(tmp_path, inters=None, items=None, name="ds"):
    items = items or [Item("i1", "One", categories=["a"], price=1.5), Item("i2", "Two"),
                      Item("i3", "Three"), Item("i4", "Four")]
    inters = inters or [Interaction("u1", "i1", 5.0, 10), Interaction("u1", "i2", 4.0, 20),
                        Interaction("u2", "i3", 3.0, 5)]
    return write_dataset(tmp_path / name, name, "test", items, inters, {"u2": {"age": 30}})


def lines(path):
    return path.read_text().splitlines()


# ---------------------------------------------------------------------------------------------
# write_dataset


def test_round_trip_and_manifest(tmp_path):
    tiny(tmp_path)
    ds = load_dataset(tmp_path / "ds")
    assert ds.manifest["counts"] == {"users": 2, "items": 4, "interactions": 3}
    assert ds.items["i1"].categories == ["a"] and ds.items["i1"].price == 1.5
    assert ds.users["u2"] == {"age": 30} and ds.users["u1"] == {}
    assert ds.has("rating") and ds.has("title") and not ds.has("review")
    for fn, digest in ds.manifest["hashes"].items():
        assert hashlib.sha256((tmp_path / "ds" / fn).read_bytes()).hexdigest() == digest


def test_write_groups_by_user_and_sorts_by_time_stably(tmp_path):
    inters = [Interaction("u1", "i3", None, 30), Interaction("u2", "i1", None, 1),
              Interaction("u1", "i1", None, 10), Interaction("u1", "i2", None, 10)]
    ds = tiny(tmp_path, inters)
    assert [(x.user_id, x.item_id) for x in ds.interactions] == [
        ("u1", "i1"), ("u1", "i2"), ("u1", "i3"), ("u2", "i1")]
    assert [json.loads(s)["item_id"] for s in lines(tmp_path / "ds" / "interactions.jsonl")] == [
        "i1", "i2", "i3", "i1"]


def test_data_hash_follows_content(tmp_path):
    a = tiny(tmp_path, name="a").data_hash
    b = tiny(tmp_path, name="b").data_hash
    c = tiny(tmp_path, [Interaction("u1", "i1", 1.0, 10)], name="c").data_hash
    assert a == b and a != c


def test_write_rejects_bad_records_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match="duplicate item id"):
        tiny(tmp_path, items=[Item("i1"), Item("i1")])
    with pytest.raises(DataError, match="unknown item"):
        tiny(tmp_path, [Interaction("u1", "nope", 1.0, 1)])
    with pytest.raises(DataError, match="no interactions"):
        write_dataset(tmp_path / "ds", "ds", "test", [Item("i1")], [])
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_existing_dir_atomically(tmp_path):
    tiny(tmp_path)
    (tmp_path / "ds" / "stale.txt").write_text("x")
    tiny(tmp_path, [Interaction("u9", "i4", 2.0, 1)])
    assert not (tmp_path / "ds" / "stale.txt").exists()
    assert set(load_dataset(tmp_path / "ds").users) == {"u9", "u2"}
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


# ---------------------------------------------------------------------------------------------
# load_dataset errors


def corrupt(tmp_path, fn, lineno, text):
    p = tmp_path / "ds" / fn
    rows = lines(p)
    rows[lineno - 1] = text
    p.write_text("\n".join(rows) + "\n")


def error_of(path):
    with pytest.raises(DataError) as e:
        load_dataset(path)
    return e.value


def test_malformed_json_line(tmp_path):
    tiny(tmp_path)
    corrupt(tmp_path, "items.jsonl", 2, '{"item_id": "i2", "title": ')
    e = error_of(tmp_path / "ds")
    assert e.line == 2 and str(e.file).endswith("items.jsonl") and "malformed JSON" in str(e)


def test_dangling_item(tmp_path):
    tiny(tmp_path)
    corrupt(tmp_path, "interactions.jsonl", 3, json.dumps({"user_id": "u2", "item_id": "i99"}))
    e = error_of(tmp_path / "ds")
    assert (e.line, e.field) == (3, "item_id") and "i99" in str(e)


def test_dangling_user(tmp_path):
    tiny(tmp_path)
    corrupt(tmp_path, "interactions.jsonl", 1, json.dumps({"user_id": "ghost", "item_id": "i1"}))
    assert error_of(tmp_path / "ds").field == "user_id"


def test_duplicate_ids(tmp_path):
    tiny(tmp_path)
    corrupt(tmp_path, "items.jsonl", 3, json.dumps({"item_id": "i1"}))
    e = error_of(tmp_path / "ds")
    assert (e.line, e.field) == (3, "item_id") and "duplicate" in str(e)
    tiny(tmp_path)
    corrupt(tmp_path, "users.jsonl", 2, json.dumps({"user_id": "u1"}))
    assert "duplicate user" in str(error_of(tmp_path / "ds"))


def test_bad_field_types(tmp_path):
    tiny(tmp_path)
    corrupt(tmp_path, "interactions.jsonl", 1,
            json.dumps({"user_id": "u1", "item_id": "i1", "rating": "five"}))
    assert error_of(tmp_path / "ds").field == "rating"
    tiny(tmp_path)
    corrupt(tmp_path, "items.jsonl", 1, json.dumps({"item_id": "i1", "categories": "a, b"}))
    assert error_of(tmp_path / "ds").field == "categories"
    tiny(tmp_path)
    corrupt(tmp_path, "interactions.jsonl", 2, json.dumps({"user_id": "u1", "item_id": ""}))
    assert error_of(tmp_path / "ds").field == "item_id"


def test_missing_manifest_and_dir(tmp_path):
    tiny(tmp_path)
    (tmp_path / "ds" / "manifest.json").unlink()
    e = error_of(tmp_path / "ds")
    assert str(e.file).endswith("manifest.json") and "not found" in str(e)
    assert "missing" in str(error_of(tmp_path / "elsewhere"))


def test_wrong_schema_version(tmp_path):
    tiny(tmp_path)
    m = tmp_path / "ds" / "manifest.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), "schema_version": 99}))
    assert error_of(tmp_path / "ds").field == "schema_version"


# ---------------------------------------------------------------------------------------------
# time split


def test_time_split_leave_last_two_out(tmp_path):
    inters = ([Interaction("long", f"i{k}", None, t) for k, t in [(3, 30), (1, 10), (4, 40), (2, 20)]]
              + [Interaction("three", "i1", None, 1), Interaction("three", "i2", None, 2),
                 Interaction("three", "i3", None, 3)]
              + [Interaction("short", "i1", None, 1), Interaction("short", "i2", None, 2)])
    ds = load_dataset(tiny(tmp_path, inters).root)
    s = time_split(ds)
    assert [x.item_id for x in s.train["long"]] == ["i1", "i2"]
    assert s.valid["long"].item_id == "i3" and s.test["long"].item_id == "i4"
    assert [x.item_id for x in s.train["three"]] == ["i1"]
    assert (s.valid["three"].item_id, s.test["three"].item_id) == ("i2", "i3")
    # users shorter than MIN_EVAL_LENGTH keep everything in train and are never evaluated
    assert MIN_EVAL_LENGTH == 3
    assert [x.item_id for x in s.train["short"]] == ["i1", "i2"]
    assert "short" not in s.valid and "short" not in s.test
    assert s.eval_users("test") == ["long", "three"] == s.eval_users("valid")
    assert [x.item_id for x in s.history("long", "test")] == ["i1", "i2", "i3"]
    assert [x.item_id for x in s.history("long", "valid")] == ["i1", "i2"]
    assert s.target("long", "valid").item_id == "i3"
    assert s.user_items("long") == {"i1", "i2", "i3", "i4"}
    assert s.train_items() == {"i1", "i2"}


def test_load_rejects_out_of_order_or_interleaved_timelines(tmp_path):
    # the file order is the timeline the split cuts, so hand-written data must respect it
    inters = [Interaction("u1", "i1", None, 10), Interaction("u1", "i2", None, 20),
              Interaction("u2", "i3", None, 5)]
    tiny(tmp_path, inters)
    path = tmp_path / "ds" / "interactions.jsonl"
    rows = lines(path)
    path.write_text("\n".join([rows[1], rows[0], rows[2]]) + "\n")
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "ds")
    assert "interactions.jsonl:2" in str(e.value) and "'timestamp'" in str(e.value)
    path.write_text("\n".join([rows[0], rows[2], rows[1]]) + "\n")
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "ds")
    assert "interactions.jsonl:3" in str(e.value) and "grouped by user" in str(e.value)
