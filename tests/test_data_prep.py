"""Tests for data_prep: each converter on tiny fixtures of its real raw format, and bad input.

Fixtures in tests/fixtures/ are invented rows written in each source's layout (no real MovieLens
rows). Bad-input cases copy a fixture into tmp_path and break one thing, then run the CLI.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.__main__ import main
from data_prep.common import k_core
from p5x.paths import SAMPLE_DATA, TEMPLATES_DIR
from p5x.schema import Interaction, load_dataset

FIX = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ERROR_LINE = re.compile(r"^error: (?P<file>[^:]+):(?P<line>\d+): field '(?P<field>[^']+)': .+$")


def convert(tmp_path, fmt, *args, name="out"):
    out = tmp_path / name
    assert main([fmt, *map(str, args), "--output", str(out)]) == 0
    return load_dataset(out)


def timelines(ds):
    return {u: [(x.item_id, x.timestamp) for x in xs] for u, xs in ds.by_user().items()}


def assert_time_ordered(ds):
    for xs in ds.by_user().values():
        ts = [x.timestamp for x in xs]
        assert ts == sorted(ts)


# ---------------------------------------------------------------------------------------------
# converters


def test_p5_maps_numbers_back_to_raw_ids(tmp_path):
    ds = convert(tmp_path, "p5", "--input", FIX / "p5")
    c = ds.manifest["counts"]
    assert (c["users"], c["items"], c["interactions"]) == (3, 6, 12)
    assert set(ds.users) == {"UAAA1", "UBBB2", "UCCC3"}
    # P5's numbers are gone: every id is a raw id, and the unused metadata row is not an item
    assert all(i.startswith("X0000000") for i in ds.items) and "X000000099" not in ds.items
    assert timelines(ds)["UBBB2"] == [("X000000002", 0), ("X000000005", 1), ("X000000003", 2)]
    assert_time_ordered(ds)


def test_p5_item_file_html_and_junk_rows(tmp_path):
    items = convert(tmp_path, "p5", "--input", FIX / "p5").items
    assert items["X000000001"].title == "Rose & Mint Hand Cream"
    assert items["X000000001"].categories == ["Beauty", "Skin Care", "Hands"]
    assert items["X000000001"].price == 4.5 and items["X000000001"].brand == "Petal Co"
    # a quoted title broken over two lines is rejoined, not split into a junk row
    assert items["X000000002"].title == "Night Serum 30ml Lavender"
    assert items["X000000003"].title == "Lip Balm Trio"
    assert items["X000000003"].categories == ["Beauty", "Women's", "Lips"]
    assert items["X000000003"].brand == "Kiss&Tell" and items["X000000003"].price is None
    assert items["X000000006"].title == 'Clay Mask "Green"'
    assert items["X000000004"].brand is None


def test_p5_json_item_file_keyed_by_number_minus_one(tmp_path):
    ds = convert(tmp_path, "p5", "--input", FIX / "p5_json")
    assert ds.items["biz-aa"].title == "Golden Wok"
    assert ds.items["biz-bb"].title == "Joe & Sons Garage"
    assert ds.items["biz-cc"].description == "Coffee & Tea, Cafes"
    assert timelines(ds)["user-b"] == [("biz-cc", 0), ("biz-dd", 1)]


def test_amazon_2014_literals_dedupe_and_meta(tmp_path, capsys):
    ds = convert(tmp_path, "amazon", "--input", FIX / "amazon/reviews_2014.json",
                 "--meta", FIX / "amazon/meta_2014.json")
    assert "dropped 1 repeated" in capsys.readouterr().err
    r1 = ds.by_user()["R1"]
    assert [x.item_id for x in r1] == ["A001", "A002", "A003"]
    first = r1[0]   # the repeated (R1, A001) pair keeps its earliest review
    assert (first.rating, first.timestamp, first.review) == (3.0, 1100000000, "First try")
    assert r1[2].review == "Great smell"
    assert ds.items["A001"].title == "Cloud Puff & Sponge"
    assert ds.items["A001"].categories == ["Beauty", "Tools & Accessories", "Makeup", "Sponges"]
    assert ds.items["A001"].price == 6.5
    # the Python-literal line was read; an item without meta is kept with no title
    r2 = {x.item_id: x for x in ds.by_user()["R2"]}
    assert r2["A001"].rating == 4.0 and ds.items["A004"].title is None
    assert r2["A004"].timestamp == 1328054400   # reviewTime "02 1, 2012" when no unixReviewTime
    assert "A999" not in ds.items
    assert ds.manifest["counts"]["interactions"] == 5
    assert_time_ordered(ds)


def test_amazon_2018_gzip_prices_descriptions(tmp_path):
    for name in ("reviews_2018.json", "meta_2018.json"):
        with open(FIX / "amazon" / name, "rb") as src, gzip.open(tmp_path / (name + ".gz"), "wb") as dst:
            dst.write(src.read())
    ds = convert(tmp_path, "amazon", "--input", tmp_path / "reviews_2018.json.gz",
                 "--meta", tmp_path / "meta_2018.json.gz")
    g1, g2, g3 = ds.items["G1"], ds.items["G2"], ds.items["G3"]
    assert g1.price == 25.0 and g2.price is None and g3.price is None
    assert g1.description == "Good for one coffee. Never expires."
    assert g1.categories == ["Gift Cards", "Restaurants"] and g3.title == "Cinema & Snacks Card"
    assert [x.item_id for x in ds.by_user()["U2"]] == ["G1", "G2"]
    assert ds.has("summary") and ds.has("review") and ds.has("rating")


def test_recbole_atomic_files(tmp_path):
    ds = convert(tmp_path, "recbole", "--input", FIX / "recbole")
    assert ds.items["m1"].title == "The Paper Moon Heist (1987)"
    assert ds.items["m3"].title == "Quiet Harbour"   # no year: title left alone
    assert ds.items["m1"].categories == ["Comedy", "Crime"]
    assert "m4" not in ds.items   # nobody rated it
    assert ds.users["u1"] == {"age": 31.0, "gender": "F", "occupation": "engineer"}
    assert timelines(ds)["u1"] == [("m2", 900), ("m1", 1000), ("m3", 1100)]


def test_recbole_min_count_is_iterative(tmp_path):
    ds = convert(tmp_path, "recbole", "--input", FIX / "recbole", "--min-count", "2")
    # u3 (1 rating) goes, which leaves m2 with 1 rating, so m2 goes too
    assert set(ds.users) == {"u1", "u2"} and set(ds.items) == {"m1", "m3"}
    assert ds.manifest["counts"]["interactions"] == 4


def test_k_core_unit():
    xs = [Interaction(u, i) for u, i in [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2"), ("c", "1")]]
    assert {(x.user_id, x.item_id) for x in k_core(xs, 2)} == {("a", "1"), ("a", "2"), ("b", "1"),
                                                                ("b", "2")}
    assert k_core(xs, 0) == xs and k_core(xs, 3) == []


def test_movielens_100k(tmp_path):
    ds = convert(tmp_path, "movielens", "--input", FIX / "ml100k")
    assert ds.manifest["counts"] == {"users": 2, "items": 4, "interactions": 6}
    assert ds.items["2"].title == "Café Méridien (1996)"   # latin-1 decoded
    assert ds.items["2"].categories == ["Drama", "Romance"]
    assert ds.items["3"].categories == []                    # the 'unknown' flag is not a genre
    assert ds.users["11"]["occupation"] == "doctor" and ds.users["11"]["age"] == 27.0
    assert [x.item_id for x in ds.by_user()["10"]] == ["2", "4", "1"]


def test_movielens_1m(tmp_path):
    ds = convert(tmp_path, "movielens", "--input", FIX / "ml1m")
    assert ds.manifest["source_format"] == "movielens"
    assert ds.items["6"].title == "Señor Nobody (1995)"
    assert ds.items["7"].categories == ["Thriller", "Crime"]
    assert [x.item_id for x in ds.by_user()["1"]] == ["7", "5", "6"]
    assert ds.users["2"]["gender"] == "M"


def test_yelp(tmp_path):
    ds = convert(tmp_path, "yelp", "--input", FIX / "yelp")
    assert ds.items["b-2"].title == "Smith & Daughters Hardware"
    assert ds.items["b-1"].categories == ["Mexican", "Restaurants"]
    y1 = ds.by_user()["y1"]
    assert [x.item_id for x in y1] == ["b-1", "b-2", "b-3"]
    assert (y1[0].timestamp, y1[0].rating, y1[0].review) == (1483273800, 5.0, "Best tacos.")


def test_yelp_short_file_names(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    shutil.copy(FIX / "yelp/yelp_academic_dataset_business.json", src / "business.json")
    shutil.copy(FIX / "yelp/yelp_academic_dataset_review.json", src / "review.json")
    assert convert(tmp_path, "yelp", "--input", src).manifest["counts"]["interactions"] == 4


def test_readme_survives_reconversion(tmp_path):
    convert(tmp_path, "recbole", "--input", FIX / "recbole")
    (tmp_path / "out" / "README.md").write_text("notes\n")
    convert(tmp_path, "movielens", "--input", FIX / "ml1m")
    assert (tmp_path / "out" / "README.md").read_text() == "notes\n"
    assert load_dataset(tmp_path / "out").manifest["source_format"] == "movielens"


# ---------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit 2, nothing written


def fails(tmp_path, capsys, argv, file=None, line=None, field=None):
    out = tmp_path / "result"
    assert main([*map(str, argv), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("error: "), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".result")]  # no temp dir left
    if line is not None:
        m = ERROR_LINE.match(err.strip())
        assert m, err
        assert m["file"].endswith(file) and int(m["line"]) == line and m["field"] == field, err
    return err


def copy_fixture(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(FIX / name, dst)
    return dst


def test_missing_input(tmp_path, capsys):
    err = fails(tmp_path, capsys, ["amazon", "--input", tmp_path / "nope.json"])
    assert "nope.json" in err and "not found" in err
    assert "not found" in fails(tmp_path, capsys, ["p5", "--input", tmp_path / "nodir"])
    err = fails(tmp_path, capsys, ["amazon", "--input", FIX / "amazon/reviews_2018.json",
                                   "--meta", tmp_path / "meta.json"])
    assert "meta.json" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "u.data" in fails(tmp_path, capsys, ["movielens", "--input", empty])


def test_unknown_format_is_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_prep", "parquet", "--input", "x", "--output",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr and not (tmp_path / "o").exists()


def test_cli_entry_point_reports_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_prep", "yelp", "--input", str(tmp_path),
                        "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")


def test_malformed_lines(tmp_path, capsys):
    bad = tmp_path / "reviews.json"
    lines = (FIX / "amazon/reviews_2018.json").read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + ['{"reviewerID": "U9", "asin": '] + lines[2:]) + "\n")
    fails(tmp_path, capsys, ["amazon", "--input", bad], "reviews.json", 3, "line")

    bad.write_text(lines[0] + "\n" + lines[1].replace('"overall": 4.0', '"overall": "four"') + "\n")
    fails(tmp_path, capsys, ["amazon", "--input", bad], "reviews.json", 2, "overall")

    bad.write_text(lines[0] + "\n" + lines[1].replace('"asin": "G2", ', "") + "\n")
    fails(tmp_path, capsys, ["amazon", "--input", bad], "reviews.json", 2, "asin")

    rb = copy_fixture(tmp_path, "recbole")
    with open(rb / "tiny.inter", "a") as f:
        f.write("u4\tm1\n")
    fails(tmp_path, capsys, ["recbole", "--input", rb], "tiny.inter", 8, "rating")

    ml = copy_fixture(tmp_path, "ml1m")
    with open(ml / "ratings.dat", "a") as f:
        f.write("3::5::5::yesterday\n")
    fails(tmp_path, capsys, ["movielens", "--input", ml], "ratings.dat", 6, "timestamp")

    y = copy_fixture(tmp_path, "yelp")
    rev = y / "yelp_academic_dataset_review.json"
    rev.write_text(rev.read_text().replace("2019-05-05 08:00:00", "05/05/2019"))
    fails(tmp_path, capsys, ["yelp", "--input", y], "yelp_academic_dataset_review.json", 3, "date")


def test_duplicate_item_ids(tmp_path, capsys):
    rb = copy_fixture(tmp_path, "recbole")
    with open(rb / "tiny.item", "a") as f:
        f.write("m2\tOrbit Again\t2002\tSci-Fi\n")
    fails(tmp_path, capsys, ["recbole", "--input", rb], "tiny.item", 6, "item_id")

    ml = copy_fixture(tmp_path, "ml100k")
    with open(ml / "u.item", "a", encoding="latin-1") as f:
        f.write("2|Copy (1990)|01-Jan-1990||x|" + "|".join("0" * 19) + "\n")
    fails(tmp_path, capsys, ["movielens", "--input", ml], "u.item", 5, "item_id")

    y = copy_fixture(tmp_path, "yelp")
    with open(y / "yelp_academic_dataset_business.json", "a") as f:
        f.write(json.dumps({"business_id": "b-1", "name": "Again"}) + "\n")
    fails(tmp_path, capsys, ["yelp", "--input", y], "yelp_academic_dataset_business.json", 4,
          "business_id")

    meta = tmp_path / "meta.json"   # a repeated asin with different metadata (identical is fine)
    meta.write_text((FIX / "amazon/meta_2018.json").read_text()
                    + json.dumps({"asin": "G1", "title": "Other"}) + "\n")
    fails(tmp_path, capsys, ["amazon", "--input", FIX / "amazon/reviews_2018.json", "--meta", meta],
          "meta.json", 5, "asin")


def test_dangling_ids(tmp_path, capsys):
    p = copy_fixture(tmp_path, "p5")
    with open(p / "sequential_data.txt", "a") as f:
        f.write("4 1 2 3\n")
    fails(tmp_path, capsys, ["p5", "--input", p], "sequential_data.txt", 4, "user")
    (p / "sequential_data.txt").write_text("1 1 2\n2 3 77 4\n")
    fails(tmp_path, capsys, ["p5", "--input", p], "sequential_data.txt", 2, "item")

    rb = copy_fixture(tmp_path, "recbole")
    with open(rb / "tiny.inter", "a") as f:
        f.write("u1\tm99\t3\t5000\n")
    fails(tmp_path, capsys, ["recbole", "--input", rb], "tiny.inter", 8, "item_id")

    y = copy_fixture(tmp_path, "yelp")
    with open(y / "yelp_academic_dataset_review.json", "a") as f:
        f.write(json.dumps({"user_id": "y3", "business_id": "b-404", "stars": 1,
                            "date": "2019-01-01 00:00:00"}) + "\n")
    fails(tmp_path, capsys, ["yelp", "--input", y], "yelp_academic_dataset_review.json", 6,
          "business_id")

    ml = copy_fixture(tmp_path, "ml100k")
    with open(ml / "u.data", "a") as f:
        f.write("12\t9\t3\t880000900\n")
    fails(tmp_path, capsys, ["movielens", "--input", ml], "u.data", 7, "item_id")


def test_empty_results(tmp_path, capsys):
    empty = tmp_path / "reviews.json"
    empty.write_text("\n")
    assert "no interactions" in fails(tmp_path, capsys, ["amazon", "--input", empty])
    err = fails(tmp_path, capsys, ["recbole", "--input", FIX / "recbole", "--min-count", "10"])
    assert "--min-count 10" in err


def test_failure_keeps_an_existing_output(tmp_path, capsys):
    convert(tmp_path, "recbole", "--input", FIX / "recbole", name="result")
    before = (tmp_path / "result" / "interactions.jsonl").read_bytes()
    assert main(["recbole", "--input", str(tmp_path / "missing"), "--output",
                 str(tmp_path / "result")]) == 2
    assert (tmp_path / "result" / "interactions.jsonl").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# the bundled sample and the real data (skipped when ../shared/data is absent)


def test_bundled_sample_is_valid_and_small():
    ds = load_dataset(SAMPLE_DATA)
    counts = ds.manifest["counts"]
    assert counts == {"users": len(ds.users), "items": len(ds.items),
                      "interactions": len(ds.interactions)}
    for fn, digest in ds.manifest["hashes"].items():
        assert hashlib.sha256((SAMPLE_DATA / fn).read_bytes()).hexdigest() == digest
    assert sum(p.stat().st_size for p in SAMPLE_DATA.iterdir()) < 2_000_000
    assert all(i.title for i in ds.items.values())
    assert (SAMPLE_DATA / "README.md").is_file()
    assert TEMPLATES_DIR.name == "templates" and TEMPLATES_DIR.parent == SAMPLE_DATA.parents[2]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "beauty").is_dir(), reason="shared Beauty data not present")
def test_real_p5_beauty(tmp_path):
    ds = convert(tmp_path, "p5", "--input", SHARED / "beauty")
    assert ds.manifest["counts"] == {"users": 22363, "items": 12101, "interactions": 198502}
    # the source .item file has a blank title for 7 items; every other item gets its title
    titled = sum(1 for i in ds.items.values() if i.title)
    assert titled >= 12094
    assert not any("&amp;" in (i.title or "") or "\n" in (i.title or "") for i in ds.items.values())
    maps = json.loads((SHARED / "beauty/datamaps.json").read_text())
    assert set(ds.items) == set(maps["id2item"].values())


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "ml-100k").is_dir(), reason="shared ml-100k data not present")
def test_real_recbole_ml100k(tmp_path):
    ds = convert(tmp_path, "recbole", "--input", SHARED / "ml-100k")
    assert ds.manifest["counts"] == {"users": 943, "items": 1682, "interactions": 100000}
    assert all(i.title for i in ds.items.values())


def test_undecodable_and_broken_gzip_files(tmp_path, capsys):
    rb = tmp_path / "rb"
    rb.mkdir()
    (rb / "x.inter").write_bytes(b"user_id:token\titem_id:token\nu1\t\xff\xfe\n")
    assert "not utf-8 text" in fails(tmp_path, capsys, ["recbole", "--input", rb])
    gz = tmp_path / "reviews.json.gz"
    gz.write_bytes(b"this is not gzip")
    assert "reviews.json.gz:1:" in fails(tmp_path, capsys, ["amazon", "--input", gz])
