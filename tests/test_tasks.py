"""Tests for p5x.tasks: every template renders, no held-out interaction reaches training prompts,
candidate lists are clean and fixed for evaluation, the epoch mixture is re-drawn, and the CLI."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from p5x import tasks
from p5x.errors import ConfigError
from p5x.schema import Interaction, Item, load_dataset, write_dataset
from p5x.tasks import FAMILIES, explanation_of, feature_words, make_context, render
from p5x.toydata import make_toy_dataset

ALL_FAMILIES = list(FAMILIES) + ["zeroshot", "preference"]
ID_WORD = re.compile(r"(?:<i\d+_\d+>)+")


@pytest.fixture(scope="module")
def ctx(toy_ds):
    return make_context(toy_ds, "random", seed=0)


@pytest.fixture(scope="module")
def train0(ctx):
    return render(ctx, ALL_FAMILIES, "train", epoch=0)


def ids_in(ctx, text):
    return {ctx.index.lookup(m) for m in ID_WORD.findall(text)} - {None}


@pytest.mark.parametrize("part", ["valid", "test"])
def test_every_template_renders_without_leftover_braces(ctx, part):
    rows = render(ctx, ALL_FAMILIES, part, templates="all")
    every = {t.id for f in ALL_FAMILIES for t in ctx.templates[f].templates}
    assert set(rows["template_id"]) == every
    for inp, tgt in zip(rows["inputs"], rows["targets"]):
        assert "{" not in inp + tgt and "}" not in inp + tgt and tgt.strip()


def test_training_renders_every_seen_template_and_no_unseen(ctx, train0):
    seen = {t.id for f in ALL_FAMILIES for t in ctx.templates[f].seen()}
    assert set(train0["template_id"]) == seen
    for inp, tgt in zip(train0["inputs"], train0["targets"]):
        assert "{" not in inp + tgt and "}" not in inp + tgt
    with pytest.raises(ConfigError, match="never trained"):
        render(ctx, "rating", "train", templates="unseen")
    with pytest.raises(ConfigError, match="never trained"):
        render(ctx, "direct", "train", templates=["direct-1", "direct-8"])


@pytest.mark.parametrize("epoch", [0, 1])
def test_no_heldout_interaction_in_any_training_prompt(ctx, epoch):
    rows = render(ctx, ALL_FAMILIES, "train", epoch=epoch)
    held = {u: {ctx.split.valid[u].item_id, ctx.split.test[u].item_id} for u in ctx.split.test}
    train_pairs = {(u, x.item_id) for u, xs in ctx.split.train.items() for x in xs}
    heldout_reviews = {x.review for part in (ctx.split.valid, ctx.split.test) for x in part.values()}
    held_titles = {u: [re.escape(ctx.ds.items[i].title) + r"(?!\d)" for i in items]
                   for u, items in held.items()}
    assert set(rows["user_id"]) == set(ctx.split.train)  # every user gets training prompts
    for r in rows:
        bad = held.get(r["user_id"], set())
        assert r["item_id"] not in bad, r
        assert not bad & set(r["candidates"]), r
        assert not bad & ids_in(ctx, r["inputs"] + " " + r["targets"]), r
        # titles stand for items in zero-shot and preference prompts
        assert not any(re.search(t, r["inputs"] + " " + r["targets"]) for t in held_titles[r["user_id"]]), r
        if r["task"] in ("rating", "explanation", "review", "zeroshot", "preference") \
                and r["kind"] != "next_text":
            assert (r["user_id"], r["item_id"]) in train_pairs
        if r["task"] == "review":
            assert not any(rev in r["inputs"] for rev in heldout_reviews if rev) or \
                (r["user_id"], r["item_id"]) in train_pairs


@pytest.mark.parametrize("part", ["train", "valid", "test"])
def test_candidate_lists_are_clean(ctx, part):
    rows = render(ctx, ["sequential", "direct", "zeroshot"], part)
    n_items = len(ctx.ds.items)
    checked = 0
    for r in rows:
        if not r["candidates"]:
            continue
        cands = r["candidates"]
        assert cands.count(r["item_id"]) == 1 and len(set(cands)) == len(cands)
        negatives = set(cands) - {r["item_id"]}
        assert not negatives & ctx.split.user_items(r["user_id"])
        expected = 20 if r["kind"] == "next_text" else 100
        assert len(cands) == min(expected, n_items - len(ctx.split.user_items(r["user_id"])) + 1)
        if r["kind"] == "candidates":  # the prompt lists exactly these ids, in this order
            shown = [ctx.index.lookup(w) for w in ID_WORD.findall(r["inputs"])]
            assert [s for s in shown if s in set(cands)] == cands
        checked += 1
    assert checked > 0


def test_eval_lists_are_fixed_and_training_draws_change_by_epoch(toy_ds, ctx, train0):
    other = make_context(toy_ds, "random", seed=0)  # a fresh context: no shared cache
    a = render(ctx, ["sequential", "direct"], "test")
    b = render(other, ["direct", "sequential"], "test")
    key = lambda rows: sorted(zip(rows["template_id"], rows["user_id"], rows["inputs"]))  # noqa: E731
    assert key(a) == key(b)
    assert render(ctx, ALL_FAMILIES, "train", epoch=0)["inputs"] == train0["inputs"]
    assert render(ctx, ALL_FAMILIES, "train", epoch=1)["inputs"] != train0["inputs"]


def test_training_mixture_counts(ctx, train0):
    seq = train0.filter(lambda r: r["task"] == "sequential")
    per_user = Counter((r["user_id"], r["kind"]) for r in seq)
    for u in ctx.split.train:
        assert per_user[(u, "next")] == 5 and per_user[(u, "candidates")] == 5
        assert per_user[(u, "yesno")] == 10
    yes = Counter(r["targets"] for r in seq if r["kind"] == "yesno")
    assert yes["yes"] == yes["no"] == 5 * len(ctx.split.train)
    n_train = sum(len(xs) for xs in ctx.split.train.values())
    assert sum(1 for t in train0["task"] if t == "rating") == n_train


def test_kind_counts_reweight_the_mixture(toy_ds, train0):
    counts = tasks.parse_kind_counts("sequential.next=15, sequential.yesno=0,direct.candidates=2")
    assert counts["sequential"] == {"next": 15, "candidates": 5, "yesno": 0}
    assert counts["direct"] == {"yesno": 10, "candidates": 2} and tasks.TRAIN_COUNTS["sequential"]["next"] == 5
    c = make_context(toy_ds, "random", seed=0)
    c.train_counts = counts
    rows = render(c, ["sequential", "direct"], "train", epoch=0)
    per_user = Counter((r["task"], r["user_id"], r["kind"]) for r in rows)
    for u in c.split.train:
        assert per_user[("sequential", u, "next")] == 15 and per_user[("sequential", u, "candidates")] == 5
        assert per_user[("sequential", u, "yesno")] == 0 and per_user[("direct", u, "candidates")] == 2
    # P5's counts written out give exactly the default rows
    c.train_counts = tasks.parse_kind_counts("")
    same = render(c, ALL_FAMILIES, "train", epoch=0)
    assert same["inputs"] == train0["inputs"] and same["targets"] == train0["targets"]


def test_drop_history_keeps_the_last_item_and_the_order():
    import numpy as np

    hist = list(range(40))
    rng = np.random.default_rng(0)
    kept = [tasks.drop_history(hist, 0.5, rng) for _ in range(200)]
    for k in kept:
        assert k[-1] == 39 and k == sorted(set(k))  # the most recent item, in order, no repeats
    share = np.mean([len(k) - 1 for k in kept]) / 39
    assert 0.45 < share < 0.55, share
    assert tasks.drop_history([7], 0.9, rng) == [7]


def test_history_dropout_thins_training_histories_only(toy_ds, ctx):
    c = make_context(toy_ds, "random", seed=0)
    c.train_counts = tasks.parse_kind_counts("sequential.next=20,sequential.candidates=0,sequential.yesno=0")
    c.history_dropout = 0.5
    c.history_len = 3  # a window shorter than most toy histories: what is shown is thinned, not refilled
    rows = render(c, ["sequential"], "train", epoch=0)
    order = {u: [x.item_id for x in xs] for u, xs in c.split.train.items()}
    dropped = checked = 0
    for inp, user, target in zip(rows["inputs"], rows["user_id"], rows["item_id"]):
        full = order[user]
        if full.count(target) != 1:
            continue
        cut = full[:full.index(target)][-3:]
        hist = [c.index.lookup(m) for m in ID_WORD.findall(inp)]
        assert hist and hist[-1] == cut[-1], (inp, cut)  # the item just before the target stays
        it = iter(cut)
        assert all(h in it for h in hist), (hist, cut)    # an ordered subsequence of the true cut
        checked += 1
        dropped += len(hist) < len(cut)
    assert checked > 50 and dropped > 0.2 * checked, (checked, dropped)
    assert sum(len(full) > 4 for full in order.values()) > 5  # many histories are longer than the window
    c.history_len = tasks.HISTORY_LEN
    for part in ("valid", "test"):  # evaluation prompts are never thinned
        assert render(c, ["sequential"], part)["inputs"] == render(ctx, ["sequential"], part)["inputs"]


def test_position_cut_weighting_spreads_prompts_by_cuts(toy_ds):
    c = make_context(toy_ds, "random", seed=0)
    c.train_counts = tasks.parse_kind_counts("sequential.next=6,sequential.candidates=0,sequential.yesno=0")
    by_user = Counter(render(c, ["sequential", "direct"], "train", epoch=0).filter(
        lambda r: r["task"] == "sequential")["user_id"])
    c.cut_weighting = "position"
    rows = render(c, ["sequential", "direct"], "train", epoch=0)
    by_pos = Counter(r["user_id"] for r in rows if r["task"] == "sequential")
    cuts = {u: len(xs) - 1 for u, xs in c.split.train.items() if len(xs) >= 2}
    assert set(by_user.values()) == {6} and len(set(cuts.values())) > 1
    per_cut = 6 * len(cuts) / sum(cuts.values())
    for u, n in cuts.items():  # floor or ceiling of the user's share
        assert abs(by_pos[u] - n * per_cut) < 1, (u, by_pos[u], n * per_cut)
    assert abs(sum(by_pos.values()) - sum(by_user.values())) <= len(cuts) ** 0.5 * 2
    direct = Counter(r["user_id"] for r in rows if r["task"] == "direct")  # other families keep their counts
    assert len(set(direct.values())) == 1


def test_position_cut_weighting_sizes_each_users_negatives_to_its_own_prompts(tmp_path, monkeypatch):
    """A user given more prompts than --kind-counts by position weighting draws its negatives in
    one block sized to its own prompts (sized from the unscaled count, the block ran out and every
    further list drew on its own: slower, and lists within the user's epoch could overlap)."""
    make_toy_dataset(tmp_path / "d", n_users=40, n_items=1000)
    c = make_context(load_dataset(tmp_path / "d"), "random", seed=0)
    c.train_counts = tasks.parse_kind_counts("sequential.next=0,sequential.candidates=2,sequential.yesno=0")
    c.cut_weighting = "position"
    draws = Counter()
    inner = tasks.Catalogue.negatives

    def counted(self, rng, user, k):
        draws[user] += 1
        return inner(self, rng, user, k)

    monkeypatch.setattr(tasks.Catalogue, "negatives", counted)
    rows = render(c, ["sequential"], "train", epoch=0)
    prompts = Counter(rows["user_id"])
    assert max(prompts.values()) > 2  # position weighting gave some users more lists than the unscaled count
    assert set(draws.values()) == {1} and set(prompts) <= set(draws)  # one block a user, never a draw per list


@pytest.mark.parametrize("spec, msg", [("sequential.nxt=3", "did you mean next"), ("rating.rating=2", "per-user"),
                                       ("sequential.next=-1", ">= 0"), ("sequential.next=x", ">= 0"),
                                       ("sequential.next", "family.kind=N"), ("next=3", "family.kind=N")])
def test_kind_counts_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        tasks.parse_kind_counts(spec)


def test_eval_rows_per_user_and_template(ctx):
    rows = render(ctx, ["direct", "rating"], "valid", templates=["direct-1", "direct-5", "rating-1"])
    c = Counter(rows["template_id"])
    n = len(ctx.split.valid)
    assert c == {"direct-1": 2 * n, "direct-5": n, "rating-1": n}
    for r in rows:
        if r["template_id"] == "rating-1":
            assert r["item_id"] == ctx.split.valid[r["user_id"]].item_id
            assert float(r["targets"]) == r["label"] == ctx.split.valid[r["user_id"]].rating


def test_sequential_history_is_the_visible_past(ctx):
    rows = render(ctx, "sequential", "test", templates=["sequential-1"])
    for r in rows:
        hist = [x.item_id for x in ctx.split.history(r["user_id"], "test")][-tasks.HISTORY_LEN:]
        shown = [ctx.index.lookup(w) for w in ID_WORD.findall(r["inputs"])]
        assert shown == hist and r["targets"] == ctx.index.text(ctx.split.test[r["user_id"]].item_id)


def test_families_that_do_not_apply(tmp_path):
    ds = write_dataset(tmp_path / "bare", "bare", "test", [Item(f"i{k}") for k in range(8)],
                       [Interaction(f"u{u}", f"i{(u + k) % 8}", None, k) for u in range(4)
                        for k in range(4)])
    c = make_context(ds)
    with pytest.raises(ConfigError, match="needs rating"):
        render(c, "rating", "train")
    assert set(render(c, "all", "train")["task"]) == {"sequential", "direct"}
    with pytest.raises(ConfigError, match="did you mean"):
        render(c, "sequentail", "train")


def test_feature_words_and_explanations(ctx):
    feats = feature_words(ctx)
    assert all("arrived" not in f and "time" not in f for f in feats.values())  # in every review
    some = next(iter(ctx.split.train.values()))[0]
    title_word = ctx.ds.items[some.item_id].title.split()[1]  # the toy's feature word
    assert feats[some.item_id][0] == title_word
    picked = explanation_of("Nice box. The scent is lovely! Ok.", ["scent"])
    assert picked == ("The scent is lovely!", "scent")
    assert explanation_of("Nice box. Fine.", ["scent"]) == ("Nice box.", "nice")
    assert explanation_of("  ", ["scent"]) is None


def test_cli_show(toy_dir, capsys):
    assert tasks.main(["show", "--data", str(toy_dir), "--task", "sequential", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("input :") == 2 and "<i" in out
    assert tasks.main(["show", "--data", str(toy_dir), "--task", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown task family")
    assert tasks.main(["show", "--data", str(toy_dir), "--task", "sequential", "-n", "1000", "--users", "0",
                       "--kind-counts", "sequential.candidates=0,sequential.yesno=0"]) == 0
    shown = re.findall(r"^\[(sequential-\d+)\]", capsys.readouterr().out, flags=re.M)
    nexts = {t.id for t in tasks.load_templates()["sequential"].templates if t.kind == "next"}
    assert shown and set(shown) <= nexts


def test_cli_show_defaults_to_bundled_sample(capsys):
    # the README's second `tasks show` example gives no --data
    assert tasks.main(["show", "--task", "direct", "--part", "test", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ") and "(direct, test," in out and out.count("input :") == 3


def test_preference_rows(ctx):
    rows = render(ctx, "preference", "test", templates="all")
    assert len(rows) == len(ctx.split.test) * len(ctx.templates["preference"].templates)
    for r in rows:
        x = ctx.split.test[r["user_id"]]
        assert r["targets"] == ("yes" if x.rating > 3 else "no") and r["label"] == float(x.rating > 3)
        assert ctx.ds.items[x.item_id].title in r["inputs"]
    assert "preference" in set(render(ctx, "all", "train")["task"])


def test_user_subsets_keep_eval_rows(ctx):
    some = sorted(ctx.split.test)[:5]
    full = render(ctx, ["direct", "sequential"], "valid")
    part = render(ctx, ["direct", "sequential"], "valid", users=some)
    assert set(part["user_id"]) == set(some)
    mine = [(r["template_id"], r["inputs"]) for r in full if r["user_id"] in set(some)]
    assert sorted(mine) == sorted(zip(part["template_id"], part["inputs"]))
    with pytest.raises(ConfigError, match="unknown user"):
        render(ctx, "direct", "valid", users=["nobody"])


def test_toy_signal_is_planted(toy_ds):
    # the toy's next item is the successor of the last one on its cycle (same brand, next "no.")
    split = make_context(toy_ds).split
    for u, x in split.test.items():
        last = toy_ds.items[split.valid[u].item_id].title.split()
        nxt = toy_ds.items[x.item_id].title.split()
        assert nxt[0] == last[0] and int(nxt[-1]) % 15 == (int(last[-1]) + 1) % 15
        assert x.rating == split.valid[u].rating
