"""Tests for p5x.baselines: popularity by hand, SASRec learning a planted sequence, MF on planted
ratings, seeded negative sampling, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from p5x import baselines as B
from p5x.metrics import rmse
from p5x.schema import Interaction, Item, write_dataset
from p5x.split import time_split



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core CPU run many times faster on one thread than on two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAST = dict(epochs=1, dim=16, layers=1, mf_epochs=1, progress=False)


@pytest.fixture
def three_users(tmp_path):
    """u1: A B | C | D   u2: B | C | A   u3: C | B | E   (train | valid | test)."""
    seqs = {"u1": "ABCD", "u2": "BCA", "u3": "CBE"}
    inters = [Interaction(u, i, 5.0, t) for u, s in seqs.items() for t, i in enumerate(s)]
    return write_dataset(tmp_path / "three", "three", "test", [Item(c) for c in "ABCDE"], inters)


def _row(rows, model, task):
    hits = [r for r in rows if r["model"] == model and r["task"] == task]
    assert len(hits) == 1, rows
    return hits[0]


def test_popularity_matches_hand_computation(three_users):
    # train counts A1 B2 C1 D0 E0 -> ranking B A C D E (ties in catalogue order); targets D, A, E
    rows = B.run_baselines(three_users, B.BaselineConfig(tasks=("sequential",), **FAST))
    m = _row(rows, "popularity", "sequential")["metrics"]
    assert _row(rows, "popularity", "sequential")["protocol"] == "full ranking"
    assert m["HR@5"] == pytest.approx(1.0)
    expect = (1 / math.log2(3 + 2) + 1 / math.log2(1 + 2) + 1 / math.log2(4 + 2)) / 3
    assert m["NDCG@5"] == pytest.approx(expect)
    assert B.popularity_counts(time_split(three_users), list("ABCDE")).tolist() == [1, 2, 1, 0, 0]
    # with history excluded: u1 ranks D E (D first), u2 A D E (A first), u3 A D E (E third)
    rows = B.run_baselines(three_users, B.BaselineConfig(tasks=("sequential",), exclude_history=True, **FAST))
    m = _row(rows, "popularity", "sequential")["metrics"]
    assert m["NDCG@5"] == pytest.approx((1 + 1 + 1 / math.log2(4)) / 3)


def test_sasrec_beats_popularity_on_planted_sequences(toy_ds):
    cfg = B.BaselineConfig(tasks=("sequential", "direct"), epochs=40, dim=32, layers=1, progress=False)
    rows = B.run_baselines(toy_ds, cfg)
    pop, sas = _row(rows, "popularity", "sequential"), _row(rows, "sasrec", "sequential")
    assert sas["metrics"]["NDCG@10"] > pop["metrics"]["NDCG@10"] + 0.3
    assert _row(rows, "sasrec", "direct")["metrics"]["HR@1"] > _row(rows, "popularity", "direct")["metrics"]["HR@1"]
    assert _row(rows, "sasrec", "direct")["protocol"].startswith("sampled 1-of-")
    auc = _row(rows, "sasrec-sigmoid", "direct yes/no (liked = rating > 3)")["metrics"]["AUC"]
    assert 0.0 <= auc <= 1.0


def test_transition_scores_by_hand(tmp_path):
    """Train sequences u1: A B C, u2: A B D, u3: A C, u4: B (valid/test after them). Successor counts:
    A->B 2, A->C 1, B->C 1, B->D 1; popularity A3 B3 C2 D1 E0 orders the rest."""
    seqs = {"u1": "ABCDE", "u2": "ABDEC", "u3": "ACBD", "u4": "BAE"}
    inters = [Interaction(u, i, 5.0, t) for u, s in seqs.items() for t, i in enumerate(s)]
    ds = write_dataset(tmp_path / "m", "m", "test", [Item(c) for c in "ABCDE"], inters)
    split = time_split(ds)
    items = list("ABCDE")
    t = B.TransitionScorer(split, items)
    assert t.counts.toarray()[0].tolist() == [0, 2, 1, 0, 0]
    s = t([["A"], ["B"], ["E"], [], ["x-unknown"]]).numpy()
    order = [[items[j] for j in np.argsort(-r, kind="stable")] for r in s]
    assert order[0] == list("BCADE")          # successors of A first (B 2, C 1), then by popularity
    assert order[1] == list("CDABE")          # C and D follow B once each; C is the more popular
    assert order[2] == order[3] == order[4] == list("ABCDE")  # no successor / empty / unknown: popularity
    # candidate scores are the same numbers, read at each user's own candidates
    cands = [["E", "C", "B"], ["D", "A", "C"]]
    got = t.candidate_scores([["A"], ["B"]], cands)
    assert np.allclose(got, [[s[0, items.index(i)] for i in cands[0]], [s[1, items.index(i)] for i in cands[1]]])
    assert np.allclose(t.candidate_scores([[], ["B"]], cands)[0], [t.prior[items.index(i)] for i in cands[0]])


def test_transition_reads_the_last_item_on_planted_sequences(toy_ds):
    """The toy next item is the successor of the last one: transition is near perfect, popularity is not."""
    rows = B.run_baselines(toy_ds, B.BaselineConfig(tasks=("sequential", "direct"), **FAST))
    trans, pop = _row(rows, "transition", "sequential")["metrics"], _row(rows, "popularity", "sequential")["metrics"]
    assert trans["HR@5"] > 0.9 and trans["HR@5"] > pop["HR@5"] + 0.5
    assert _row(rows, "transition", "direct")["metrics"]["HR@1"] > 0.9


def test_cooc_ranks_training_neighbours_and_runs_only_when_named(toy_ds):
    """cooc: the last item's training neighbours first; toy cycles make its successor one of them."""
    split = time_split(toy_ds)
    items = list(toy_ds.items)
    c = B.FactorScorer(split, items, dim=16)
    s = c([[items[0]], [], ["x-unknown"]]).numpy()
    pop = B.popularity_scores(split, items)
    assert np.argsort(-s[1], kind="stable").tolist() == np.argsort(-pop, kind="stable").tolist()  # no history
    assert np.array_equal(s[1], s[2])
    cands = [items[:5], items[5:10]]
    got = c.candidate_scores([[items[0]], [items[1]]], cands)
    full = c([[items[0]], [items[1]]]).numpy()
    assert np.allclose(got, [full[0, :5], full[1, 5:10]])
    rows = B.run_baselines(toy_ds, B.BaselineConfig(tasks=("sequential", "direct"), models=("popularity", "cooc"),
                                                    **FAST))
    cooc, pop_m = _row(rows, "cooc", "sequential")["metrics"], _row(rows, "popularity", "sequential")["metrics"]
    assert cooc["HR@5"] > pop_m["HR@5"] + 0.3 and _row(rows, "cooc", "direct")["metrics"]["HR@5"] > 0.5
    assert "cooc" not in B.BaselineConfig().models  # not a default row


@pytest.mark.parametrize("method", ["markov", "markov-untied"])
def test_markov_ranks_the_successor_and_runs_only_when_named(toy_ds, method):
    """markov / markov-untied: the fitted next-item models put the toy's successor on top, unlike popularity."""
    rows = B.run_baselines(toy_ds, B.BaselineConfig(tasks=("sequential", "direct"), models=("popularity", method),
                                                    **FAST))
    mk, pop_m = _row(rows, method, "sequential")["metrics"], _row(rows, "popularity", "sequential")["metrics"]
    assert mk["HR@5"] > pop_m["HR@5"] + 0.3 and _row(rows, method, "direct")["metrics"]["HR@5"] > 0.5
    assert method not in B.BaselineConfig().models


def test_models_selects_the_ranking_baselines(three_users, tmp_path, capsys):
    rows = B.run_baselines(three_users, B.BaselineConfig(tasks=("sequential", "direct"),
                                                         models=("transition",), **FAST))
    assert {r["model"] for r in rows} == {"transition"} and {r["task"] for r in rows} == {"sequential", "direct"}
    assert B.main(["--data", str(three_users.root), "--tasks", "sequential", "--models", "popularity,transition",
                   "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert {r["model"] for r in meta["rows"]} == {"popularity", "transition"}
    assert B.main(["--data", str(three_users.root), "--models", "popularity,bigram"]) == 2
    assert "--models" in capsys.readouterr().err


def test_score_sasrec_shapes(toy_ds):
    split = time_split(toy_ds)
    items = list(toy_ds.items)
    ce = B.train_sasrec(split, items, "ce", dim=16, layers=1, epochs=2, progress=False)
    hist = [[x.item_id for x in split.history(u, "test")] for u in list(split.test)[:3]]
    assert B.score_sasrec(ce, hist).shape == (3, len(items))
    sig = B.train_sasrec(split, items, "sigmoid", dim=16, layers=1, epochs=2, progress=False)
    p = B.score_sasrec(sig, hist, [items[:4]] * 3)
    assert p.shape == (3, 4) and ((p > 0) & (p < 1)).all()


def test_mf_beats_global_mean_on_planted_ratings(toy_ds):
    split = time_split(toy_ds)
    train = B.rating_train_records(split, "test")
    evals = B.rating_eval_records(split, "test")
    true = [x.rating for x in evals]
    mf = B.train_mf(train, epochs=60, progress=False)
    base = rmse([B.global_mean(train)] * len(evals), true)
    assert rmse(mf([(x.user_id, x.item_id) for x in evals]), true) < 0.6 * base


def test_candidates_are_the_models_and_exclude_positives(toy_ds):
    """Baselines rank exactly the lists the model's candidate prompts show (p5x.tasks)."""
    from p5x.tasks import eval_candidates, make_context, render

    ctx = make_context(toy_ds, seed=7)
    split = ctx.split
    for u in split.eval_users("test"):
        c = eval_candidates(ctx, u, "test")
        negs = [i for i in c if i != split.test[u].item_id]
        assert split.test[u].item_id in c and len(set(c)) == len(c) == len(negs) + 1
        assert not set(negs) & split.user_items(u)
        assert c == eval_candidates(make_context(toy_ds, seed=7), u, "test")
    rows = render(ctx, ["direct"], "test", templates=["direct-5"])
    for u, cands in zip(rows["user_id"], rows["candidates"]):
        assert cands == eval_candidates(ctx, u, "test")
    # the draw does not depend on the indexing method
    other = make_context(toy_ds, index_method="sequential", seed=7)
    u = split.eval_users("test")[0]
    assert eval_candidates(other, u, "test") == eval_candidates(ctx, u, "test")
    assert any(eval_candidates(make_context(toy_ds, seed=8), v, "test") != eval_candidates(ctx, v, "test")
               for v in split.eval_users("test"))


def test_rank_candidates_breaks_ties_randomly():
    cands = [["t"] + [f"n{j}" for j in range(9)]] * 200
    ranked = B._rank_candidates(np.zeros((200, 10)), cands, seed=0)
    first = np.mean([r[0] == "t" for r in ranked])
    assert first < 0.3  # all tied: the target is first about 1 time in 10, not always


def test_max_users_scores_the_first_users_by_sorted_id(three_users):
    """Popularity ranks B A C D E; targets u1 D (rank 4), u2 A (rank 2), u3 E (rank 5). The first two
    users by sorted id are u1 and u2, so NDCG@5 is the mean over those two only: the users a model
    row of `p5x.evaluate --max-users 2` is scored on."""
    rows = B.run_baselines(three_users, B.BaselineConfig(tasks=("sequential",), max_users=2, **FAST))
    m = _row(rows, "popularity", "sequential")["metrics"]
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(4 + 1) + 1 / math.log2(2 + 1)) / 2)
    assert B.main(["--data", str(three_users), "--max-users", "0"]) == 2


def test_max_users_restricts_the_rating_records(toy_ds):
    split = time_split(toy_ds)
    first = sorted(split.eval_users("test"))[:3]
    true = [split.target(u, "test").rating for u in first]
    mu = B.global_mean(B.rating_train_records(split, "test"))
    rows = B.run_baselines(toy_ds, B.BaselineConfig(tasks=("rating",), max_users=3, **FAST))
    assert _row(rows, "global mean", "rating")["metrics"]["RMSE"] == pytest.approx(rmse([mu] * 3, true))
    everyone = B.run_baselines(toy_ds, B.BaselineConfig(tasks=("rating",), **FAST))
    assert _row(everyone, "global mean", "rating")["metrics"]["RMSE"] != pytest.approx(rmse([mu] * 3, true))


def test_cli_writes_results_and_rejects_bad_tasks(toy_dir, tmp_path, capsys):
    out = tmp_path / "res"
    rc = B.main(["--data", str(toy_dir), "--tasks", "rating", "--out", str(out), "--mf-epochs", "5",
                 "--no-progress"])
    assert rc == 0
    data = json.loads((out / "metrics.json").read_text())
    assert {r["model"] for r in data["rows"]} == {"global mean", "user mean", "mf"}
    assert data["meta"]["split"] == "test" and data["meta"]["data_hash"]
    assert (out / "metrics.md").exists()
    assert B.main(["--data", str(toy_dir), "--tasks", "sequentail"]) == 2
    assert "error: " in capsys.readouterr().err
    assert B.main(["--data", str(tmp_path / "missing")]) == 2


def test_sasrec_scores_do_not_depend_on_batch_padding(toy_ds):
    # a short history scored alone and next to a long one (which left-pads it) gets the same scores:
    # padding is masked out of attention, as in SASRec's key masking
    split = time_split(toy_ds)
    items = list(toy_ds.items)
    ce = B.train_sasrec(split, items, "ce", dim=16, layers=2, epochs=2, progress=False)
    short, long_ = items[:2], (items * 5)[:40]
    alone = B.score_sasrec(ce, [short])
    padded = B.score_sasrec(ce, [long_, short])
    assert np.allclose(alone[0], padded[1], atol=1e-5)
    assert not np.allclose(padded[0], padded[1], atol=1e-3)  # the long history scores differently
    assert np.isfinite(padded).all()



def test_cooc_and_markov_vectors_are_computed_on_the_baseline_device(toy_ds, monkeypatch):
    """--device cuda puts the eigendecomposition and the Markov fit where SASRec trains (train.py's
    --item-init does the same); --device cpu keeps cooc on ARPACK (device None)."""
    import p5x.iteminit as I

    seen = {}
    real_cooc, real_fit = I.cooccurrence_vectors, I.fit_markov

    def cooc(split, items, dim, seed=0, device=None):
        seen["cooc"] = device
        return real_cooc(split, items, dim, seed)

    def fit(split, items, dim, seed=0, device=None, **kw):
        seen["markov"] = device
        return real_fit(split, items, dim, seed, epochs=2)

    monkeypatch.setattr(I, "cooccurrence_vectors", cooc)
    monkeypatch.setattr(I, "fit_markov", fit)
    for dev, want in (("cuda", "cuda"), ("cpu", None)):
        seen.clear()
        B.run_baselines(toy_ds, B.BaselineConfig(tasks=("sequential",), models=("cooc", "markov"), device=dev, **FAST))
        assert seen == {"cooc": want, "markov": want}, dev


def test_by_history_rows_split_the_users_and_average_back(toy_ds):
    from p5x import metrics as M

    cfg = B.BaselineConfig(tasks=("sequential",), models=("popularity", "transition"), by_history=True, **FAST)
    rows = B.run_baselines(toy_ds, cfg)
    split = time_split(toy_ds)
    users = split.eval_users("test")
    want = {}
    for u in users:
        g = M.history_group(len(split.history_ids(u, "test")))
        want[g] = want.get(g, 0) + 1
    assert len(want) > 1, want  # the toy data has histories of several lengths
    for model in ("popularity", "transition"):
        whole = [r for r in rows if r["model"] == model and r["protocol"] == "full ranking"]
        parts = [r for r in rows if r["model"] == model and r["protocol"].startswith("full ranking, users with ")]
        assert len(whole) == 1 and "n" not in whole[0]
        assert {r["protocol"].split("with ")[1].split(" ")[0]: r["n"] for r in parts} == want
        for k, v in whole[0]["metrics"].items():
            assert sum(r["n"] * r["metrics"][k] for r in parts) / len(users) == pytest.approx(v)
    assert not [r for r in B.run_baselines(toy_ds, B.BaselineConfig(tasks=("sequential",), **FAST))
                if ", users with " in r["protocol"]]


def test_transition_log_probs_by_hand(tmp_path):
    """Same sequences as test_transition_scores_by_hand: A->B 2, A->C 1; training counts A3 B3 C2 D1 E0,
    plus one each, spread the smoothing pseudo-counts."""
    seqs = {"u1": "ABCDE", "u2": "ABDEC", "u3": "ACBD", "u4": "BAE"}
    inters = [Interaction(u, i, 5.0, t) for u, s in seqs.items() for t, i in enumerate(s)]
    split = time_split(write_dataset(tmp_path / "m", "m", "test", [Item(c) for c in "ABCDE"], inters))
    t = B.TransitionScorer(split, list("ABCDE"))
    pop = np.array([4, 4, 3, 2, 1]) / 14
    for alpha in (0.5, 100.0):
        lp = t.log_probs([["A"], [], ["x-unknown"]], smoothing=alpha).numpy()
        want_a = (np.array([0, 2, 1, 0, 0]) + alpha * pop) / (3 + alpha)
        assert np.allclose(np.exp(lp[0]), want_a) and np.allclose(np.exp(lp[1]), pop)
        assert np.allclose(lp[1], lp[2])
    assert np.allclose(B.popularity_probs(split, list("ABCDE")), pop)


def test_markov_log_probs_are_the_fitted_softmax(toy_ds, monkeypatch):
    split = time_split(toy_ds)
    items = list(toy_ds.items)
    f = B.FactorScorer(split, items, dim=8, method="markov-untied")
    lp = f.log_probs([[items[0]], []])
    assert torch.allclose(lp.exp().sum(1), torch.ones(2, dtype=lp.dtype))
    assert torch.allclose(lp[0] - lp[0].max(), (f([[items[0]]])[0] - f.prior) - (f([[items[0]]])[0] - f.prior).max())
    assert torch.allclose(lp[1], lp[1][0].expand(len(items)))  # no history: uniform
    with pytest.raises(ValueError, match="cooc"):
        B.FactorScorer(split, items, dim=8).log_probs([[items[0]]])
    # the two tables come from train.py's --item-init cache, so a second scorer fits nothing
    import p5x.iteminit as I

    calls = []
    real = I.fit_markov
    monkeypatch.setattr(I, "fit_markov", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = B.FactorScorer(split, items, dim=8, method="markov-untied")
    assert not calls and torch.equal(g.vec, f.vec) and torch.equal(g.query, f.query)


def test_content_prior_rows_add_the_prior_to_each_log_prob(toy_ds, capsys):
    """--content-prior W: one more sequential row per probability model, ranked by its log-probability
    plus W x p5x.content's prior; none for cooc, the direct task or W = 0."""
    from p5x.content import ContentPrior

    split = time_split(toy_ds)
    items = list(toy_ds.items)
    users = split.eval_users("test")
    hist = [split.history_ids(u, "test") for u in users]
    cfg = B.BaselineConfig(tasks=("sequential", "direct"), models=("popularity", "transition", "cooc"),
                           content_prior=3.0, **FAST)
    trans = B.TransitionScorer(split, items)
    mixed = dict(B._with_content(toy_ds, split, items, cfg, trans, {}, None))
    assert set(mixed) == {"popularity + 3 x content prior", "transition + 3 x content prior"}
    prior = torch.from_numpy(ContentPrior(toy_ds, items).scores(hist)).double()
    got = mixed["transition + 3 x content prior"](hist)
    assert torch.allclose(got, trans.log_probs(hist) + 3 * prior, atol=1e-8)
    assert not torch.allclose(got, trans.log_probs(hist), atol=1e-3)  # the prior does move the scores
    rows = B.run_baselines(toy_ds, cfg)
    names = {(r["model"], r["task"]) for r in rows}
    assert ("transition + 3 x content prior", "sequential") in names
    assert ("popularity + 3 x content prior", "sequential") in names
    assert not any("content prior" in m and t == "direct" for m, t in names)
    assert not any(m.startswith("cooc +") for m, _ in names)
    # the toy's next items share their group's words: the prior lifts popularity, as content alone does
    m = {r["model"]: r["metrics"] for r in rows if r["task"] == "sequential"}
    assert m["popularity + 3 x content prior"]["NDCG@10"] > m["popularity"]["NDCG@10"] + 0.1
    off = B.run_baselines(toy_ds, B.BaselineConfig(tasks=("sequential",), models=("transition",),
                                                   content_prior=0.0, **FAST))
    assert [r["model"] for r in off] == ["transition"]
    for bad in ("-1", "nan", "inf"):
        assert B.main(["--data", str(toy_ds.root), "--tasks", "sequential", "--content-prior", bad]) == 2
        assert "--content-prior" in capsys.readouterr().err
