"""Tests for p5x.metrics against values computed by hand, and for the results files."""

from __future__ import annotations

import json
import math

import pytest

from p5x import metrics as M

RANKED = [["a", "b", "c", "d"], ["x", "y", "a", "b"], ["q", "r", "s", "t"], [None, "z", "z", "w"]]
TARGETS = ["a", "a", "a", "z"]  # ranks 0, 2, absent, 1 (first occurrence of a duplicate)


def test_target_ranks():
    assert M.target_ranks(RANKED, TARGETS).tolist() == [0, 2, -1, 1]
    with pytest.raises(ValueError):
        M.target_ranks(RANKED, TARGETS[:2])


def test_hit_rate_and_ndcg_by_hand():
    assert M.hit_rate_at_k(RANKED, TARGETS, 1) == pytest.approx(1 / 4)
    assert M.hit_rate_at_k(RANKED, TARGETS, 2) == pytest.approx(2 / 4)
    assert M.hit_rate_at_k(RANKED, TARGETS, 3) == pytest.approx(3 / 4)
    # NDCG@2: user0 1/log2(2)=1, user3 1/log2(3); NDCG@3 adds user1 1/log2(4)=0.5
    assert M.ndcg_at_k(RANKED, TARGETS, 1) == pytest.approx(1 / 4)
    assert M.ndcg_at_k(RANKED, TARGETS, 2) == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert M.ndcg_at_k(RANKED, TARGETS, 3) == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 4)
    assert M.hit_rate([["b"]], ["b"], 1) == 1.0 and M.ndcg([["c", "b"]], ["b"], 1) == 0.0


def test_mrr_by_hand():
    assert M.mrr(RANKED, TARGETS) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    assert M.mrr(RANKED, TARGETS, k=2) == pytest.approx((1 + 1 / 2) / 4)


def test_ranking_metrics_names():
    out = M.ranking_metrics(RANKED, TARGETS, ks=(1, 3), ndcg_ks=(3,))
    assert set(out) == {"HR@1", "HR@3", "NDCG@3"}
    assert out["HR@3"] == pytest.approx(0.75)


def test_rmse_mae_by_hand():
    assert M.rmse([1, 2, 3], [1, 4, 0]) == pytest.approx(math.sqrt((0 + 4 + 9) / 3))
    assert M.mae([1, 2, 3], [1, 4, 0]) == pytest.approx(5 / 3)
    with pytest.raises(ValueError):
        M.rmse([1, 2], [1])


def test_auc_by_hand():
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs won 1+1, 0+1 -> 3/4
    assert M.auc([1, 1, 0, 0], [0.8, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    # a tie counts one half
    assert M.auc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)
    assert M.auc([0, 1], [0.1, 0.9]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.auc([1, 1], [0.1, 0.2])


def test_bleu_and_rouge():
    refs = ["the scent of this cream is wonderful", "it arrived on time and works well"]
    assert M.bleu4(refs, refs) == pytest.approx(100.0)
    assert M.bleu4(["totally unrelated words here"] * 2, refs) == pytest.approx(0.0)
    half = ["the scent of this lotion is poor", "it arrived late and works badly"]
    b4, b2 = M.bleu4(half, refs), M.bleu2(half, refs)
    assert 0 < b4 < b2 < 100  # bigrams match more often than 4-grams
    r = M.rouge(refs, refs)
    assert r == pytest.approx({"ROUGE-1": 100.0, "ROUGE-2": 100.0, "ROUGE-L": 100.0})
    # hand: "a b c" vs "a b d": unigram P=R=2/3 -> F1 2/3; bigram 1 of 2 -> 1/2; LCS 2 -> 2/3
    r = M.rouge(["a b c"], ["a b d"])
    assert r["ROUGE-1"] == pytest.approx(200 / 3) and r["ROUGE-2"] == pytest.approx(50.0)
    assert r["ROUGE-L"] == pytest.approx(200 / 3)


def _rows():
    return [
        {"model": "popularity", "task": "sequential", "protocol": "full ranking", "templates": "-",
         "metrics": {"HR@5": 0.01234567, "NDCG@5": 0.005}},
        {"model": "mf", "task": "rating", "protocol": "-", "templates": "-", "metrics": {"RMSE": 1.1}},
    ]


def test_format_table():
    # one table per family, each with its own metric columns
    t = M.format_table(_rows()).splitlines()
    assert t[0] == "**sequential**" and t[4] == "| popularity | sequential | full ranking | - | 0.0123 | 0.0050 |"
    assert t[2] == "| model | task | protocol | templates | HR@5 | NDCG@5 |"
    assert t[6] == "**rating**" and t[8] == "| model | task | protocol | templates | RMSE |"
    assert t[10] == "| mf | rating | - | - | 1.1000 |"
    single = M.format_table(_rows()[:1]).splitlines()
    assert single[0].startswith("| model |") and len(single) == 3
    assert M.family_of("direct yes/no (liked = rating > 3)") == "direct" == M.family_of("direct/yesno")
    with pytest.raises(ValueError):
        M.format_table([{"model": "x"}])


def test_write_results(tmp_path):
    p = M.write_results(tmp_path / "out" / "metrics.json", _rows(),
                        {"split": "test", "seed": 3, "data_hash": "abc", "device": "cpu"})
    data = json.loads(p.read_text())
    assert data["rows"] == _rows()
    assert data["meta"]["seed"] == 3 and data["meta"]["device"] == "cpu"
    assert "commit" in data["meta"] and "indexing" in data["meta"]
    md = (tmp_path / "out" / "metrics.md").read_text()
    assert "| popularity | sequential |" in md and "- data_hash: abc" in md
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == ["metrics.json", "metrics.md"]


def test_history_groups_cover_every_length_once():
    assert [M.history_group(n) for n in (0, 1, 3, 4, 5, 6, 10, 11, 20, 21, 500)] == \
        ["0", "1-3", "1-3", "4-5", "4-5", "6-10", "6-10", "11-20", "11-20", "21+", "21+"]
    assert M.HISTORY_LABELS == ("0", "1-3", "4-5", "6-10", "11-20", "21+")
    with pytest.raises(ValueError):
        M.history_group(-1)
    assert M.history_groups_protocol("full ranking", "4-5", 12) == "full ranking, users with 4-5 history items (n=12)"


def test_ranking_metrics_by_group_by_hand():
    ranked = [["a", "b"], ["b", "a"], ["c", "a"], ["a", "c"]]
    targets = ["a", "a", "x", "c"]       # ranks 0, 1, absent, 1
    groups = ["4-5", "1-3", "1-3", "4-5"]
    got = M.ranking_metrics_by_group(ranked, targets, groups, ks=(1, 2), order=M.HISTORY_LABELS)
    assert [(g, n) for g, n, _ in got] == [("1-3", 2), ("4-5", 2)]  # HISTORY_LABELS order, not first-seen
    short, long_ = got[0][2], got[1][2]
    assert short == pytest.approx({"HR@1": 0.0, "HR@2": 0.5, "NDCG@1": 0.0, "NDCG@2": 0.5 / math.log2(3)})
    assert long_ == pytest.approx({"HR@1": 0.5, "HR@2": 1.0, "NDCG@1": 0.5, "NDCG@2": (1 + 1 / math.log2(3)) / 2})
    overall = M.ranking_metrics(ranked, targets, ks=(1, 2))
    for k in overall:  # each group weighted by its users gives back the whole
        assert sum(n * m[k] for _, n, m in got) / len(targets) == pytest.approx(overall[k])
    assert [g for g, _, _ in M.ranking_metrics_by_group(ranked, targets, ["z", "y", "z", "y"], ks=(1,))] == ["z", "y"]
    with pytest.raises(ValueError):
        M.ranking_metrics_by_group(ranked, targets, groups[:3])
