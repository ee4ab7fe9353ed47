"""Tests for p5x.templates: the shipped families and the loader's checks."""

from __future__ import annotations

import json
import shutil

import pytest

from p5x.errors import TemplateError
from p5x.templates import load_templates, placeholders

SIZES = {"rating": 10, "sequential": 13, "explanation": 12, "review": 4, "direct": 8, "zeroshot": 7,
         "preference": 4}


def test_shipped_families_have_p5_sizes_and_one_unseen_last():
    fams = load_templates()
    for name, size in SIZES.items():
        fam = fams[name]
        assert len(fam.templates) == size, name
        assert fam.templates[-1].unseen and fam.unseen() == [fam.templates[-1]]
        assert all(t.id.startswith(name + "-") for t in fam.templates)


def test_loader_is_independent_of_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(SIZES) <= set(load_templates())


def write_family(tmp_path, templates, fields=("user", "item")):
    (tmp_path / "fam.json").write_text(json.dumps(
        {"family": "fam", "fields": list(fields), "templates": templates}))
    return tmp_path


def t(tid, inp, target="{item}", unseen=False, kind="next"):
    return {"id": tid, "kind": kind, "input": inp, "target": target, "unseen": unseen}


def test_undeclared_placeholder_is_rejected_with_file_id_and_name(tmp_path):
    d = write_family(tmp_path, [t("fam-1", "user {user} likes {colour} things"),
                                t("fam-2", "x {user}", unseen=True)])
    with pytest.raises(TemplateError) as e:
        load_templates(d)
    msg = str(e.value)
    assert "fam.json" in msg and "fam-1" in msg and "{colour}" in msg


@pytest.mark.parametrize("templates, needle", [
    ([t("a-1", "u {user}"), t("a-1", "v {user}", unseen=True)], "duplicate"),
    ([t("a-1", "u {user}", unseen=True), t("a-2", "v {user}", unseen=True)], "unseen"),
    ([t("a-1", "u {user}"), t("a-2", "v {user}")], "unseen"),
    ([], "non-empty"),
    ([t("a-1", "is {item}? {user}", unseen=True)], "surrounded by spaces"),
    ([t("a-1", "broken {user", unseen=True)], "braces"),
])
def test_bad_families_are_rejected(tmp_path, templates, needle):
    with pytest.raises(TemplateError, match=needle):
        load_templates(write_family(tmp_path, templates))


def test_ids_unique_across_files(tmp_path):
    src = load_templates()["direct"].path
    shutil.copy(src, tmp_path / "direct.json")
    d = json.loads(src.read_text())
    d["family"] = "direct2"
    (tmp_path / "direct2.json").write_text(json.dumps(d))
    with pytest.raises(TemplateError, match="also used"):
        load_templates(tmp_path)


def test_placeholders_parse():
    assert placeholders("a {x} b {y} {x}") == ["x", "y", "x"]
