"""p5x.content: the TF-IDF content prior, its use in ranking (p5x.evaluate --content-prior) and its baseline row."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from p5x.checkpoint import load_checkpoint
from p5x.content import ContentPrior, item_texts
from p5x.errors import ConfigError
from p5x.evaluate import main as evaluate_main
from p5x.inference import build_item_trie, rank_items
from p5x.schema import Dataset, Item

from test_evaluate import _tiny_run

torch.set_num_threads(1)


def _ds(items: dict[str, Item | None]) -> Dataset:
    return Dataset("t", {k: v for k, v in items.items() if v is not None}, {}, [])


SHOP = {
    "a": Item("a", "red matte lipstick", "Glow", ["Shop", "Lips"]),
    "b": Item("b", "red gloss lipstick", "Glow", ["Shop", "Lips"]),
    "c": Item("c", "blue nail polish", "Nailz", ["Shop", "Nails"]),
    "d": Item("d", "nail polish remover", "Nailz", ["Shop", "Nails"]),
    "e": Item("e", None, None, []),  # no text at all
}


def test_item_texts_leave_out_what_every_item_shares():
    texts = item_texts(_ds(SHOP), ["a", "c", "missing"])
    assert texts[0] == "red matte lipstick Glow Lips" and texts[1] == "blue nail polish Nailz Nails"
    assert texts[2] == ""  # an id the catalogue does not describe
    # "Shop" is on every item of the list asked for... but not on "e", so over all five it stays
    assert "Shop" in item_texts(_ds(SHOP), list(SHOP))[0]


def test_prior_is_the_decayed_similarity_to_the_latest_items_and_no_item_its_own_neighbour():
    items = list(SHOP)
    cp = ContentPrior(_ds(SHOP), items, items_back=2, decay=0.5)
    x = cp.vectors.toarray()
    sim = x @ x.T
    s = cp.scores([["c", "a"], ["d", "c", "a"], [], ["zzz"], ["e"]])
    assert s.shape == (5, 5) and s.dtype == np.float32
    a, b, c, d, e = range(5)
    # history c, a: the newest item a weighs 1, c weighs .5; a and c get nothing from themselves
    expect = sim[a] + 0.5 * sim[c]
    expect[a] -= sim[a, a]
    expect[c] -= 0.5 * sim[c, c]
    np.testing.assert_allclose(s[0], expect, atol=1e-6)
    assert s[0, b] > s[0, d] > 0 and s[0, e] == 0  # b is a's kind; d is c's, at half the weight
    assert s[0, a] == pytest.approx(0.5 * sim[c, a], abs=1e-6) and s[0, c] == pytest.approx(sim[a, c], abs=1e-6)
    np.testing.assert_allclose(s[1], s[0], atol=1e-6)  # items_back 2: d is too old to count
    assert not s[2].any() and not s[3].any() and not s[4].any()  # empty, unknown, text-less histories


def test_prior_without_text_anywhere_is_zero():
    cp = ContentPrior(_ds({"a": Item("a"), "b": Item("b")}), ["a", "b"])
    assert not cp.scores([["a"], ["b", "a"]]).any()
    with pytest.raises(ValueError, match="items_back"):
        ContentPrior(_ds(SHOP), list(SHOP), items_back=0)


@pytest.fixture(scope="module")
def atomic_dir(toy_dir, tmp_path_factory):
    return _tiny_run(toy_dir, tmp_path_factory.mktemp("content_atomic") / "ckpt", index="atomic",
                     tasks="sequential")


class _Fixed:
    """A prior that prefers a fixed item order: the last `items` item most."""

    def __init__(self, items):
        self.items = list(items)

    def scores(self, histories):
        return np.tile(np.arange(len(self.items), dtype=np.float32), (len(histories), 1))


def test_rank_items_adds_the_prior_to_the_first_step(atomic_dir, toy_ds):
    ck = load_checkpoint(atomic_dir, data=toy_ds)
    trie = build_item_trie(ck)
    users = sorted(ck.user_index.codes)[:4]
    prompts = [f"what will user {ck.user_index.text(u)} buy next ?" for u in users]
    hist = [[] for _ in prompts]
    items = sorted(toy_ds.items)
    plain, _ = rank_items(ck, prompts, trie, beams=5, batch_size=3, progress=False)
    zero, _ = rank_items(ck, prompts, trie, beams=5, batch_size=3, progress=False, prior=(_Fixed(items), hist, 0.0))
    assert zero == plain
    # an overwhelming prior decides the order: its five best items, best first
    big, _ = rank_items(ck, prompts, trie, beams=5, batch_size=3, progress=False, prior=(_Fixed(items), hist, 1e4))
    assert all(r == items[::-1][:5] for r in big)
    # a moderate one moves the lists without emptying them of the model's own picks
    mid, _ = rank_items(ck, prompts, trie, beams=5, batch_size=3, progress=False,
                        prior=(_Fixed(items), hist, 0.05))
    assert mid != plain and all(len(set(r)) == 5 for r in mid)


def test_a_prior_for_multi_token_ids_is_refused_before_any_ranking(toy_dir, toy_ds, tmp_path, capsys):
    from test_evaluate import _gen

    run = _tiny_run(toy_dir, tmp_path / "random", tasks="sequential")
    ck = load_checkpoint(run, data=toy_ds)
    trie = build_item_trie(ck)
    with pytest.raises(ConfigError, match="one-token item ids"):
        rank_items(ck, ["what next ?"], trie, beams=3, progress=False, prior=(_Fixed(toy_ds.items), [[]], 1.0))
    out = tmp_path / "ev"
    capsys.readouterr()  # (the training's own output)
    rc = evaluate_main(["--checkpoint", str(run), "--tasks", "sequential", "--no-baselines", "--no-progress",
                        "--content-prior", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "one-token item ids" in err and err.count("\n") == 1 and not out.exists()
    r = _gen("--checkpoint", str(run), "--task", "sequential", "--user", sorted(toy_ds.users)[0], "--content-prior", "2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "one-token item ids" in r.stderr


def test_evaluate_reports_a_labelled_row_with_the_prior(atomic_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = evaluate_main(["--checkpoint", str(atomic_dir), "--tasks", "sequential", "--template-ids",
                        "sequential-1", "--templates", "seen", "--beams", "10", "--no-baselines", "--no-progress",
                        "--content-prior", "2", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text())
    protocols = [r["protocol"] for r in res["rows"] if r["task"] == "sequential/next"]
    assert protocols == ["full ranking", "full ranking + 2 x content prior (3 items back, decay 0.5)"]
    assert res["meta"]["content_prior"] == {"weight": 2.0, "items_back": 3, "decay": 0.5}
    a, b = [r["metrics"] for r in res["rows"] if r["task"] == "sequential/next"]
    assert a != b  # the toy items' titles tell groups apart, so the prior moves the ranking
    assert "content prior" in capsys.readouterr().out
    rc = evaluate_main(["--checkpoint", str(atomic_dir), "--tasks", "sequential", "--content-prior", "-1",
                        "--no-baselines", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "--content-prior" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_content_baseline_row(toy_ds):
    from p5x.baselines import BaselineConfig, run_baselines

    rows = run_baselines(toy_ds, BaselineConfig(part="test", tasks=("sequential", "direct"),
                                                models=("popularity", "content"), progress=False))
    got = {(r["model"], r["task"]): r["metrics"] for r in rows}
    assert set(got) == {("popularity", "sequential"), ("content", "sequential"), ("popularity", "direct"),
                        ("content", "direct")}
    # the toy data's next items share their group's words, so the prior beats popularity there
    assert got[("content", "sequential")]["NDCG@10"] > got[("popularity", "sequential")]["NDCG@10"]


def test_generate_with_the_content_prior(atomic_dir, toy_ds, toy_dir, tmp_path):
    from test_evaluate import _gen

    user = sorted(toy_ds.users)[0]
    args = ["--checkpoint", str(atomic_dir), "--task", "sequential", "--user", user, "--top-k", "5", "--json"]
    plain = json.loads(_gen(*args).stdout.strip().splitlines()[-1])["items"]
    r = _gen(*args, "--content-prior", "1000")
    assert r.returncode == 0, r.stderr
    got = [x["item"] for x in json.loads(r.stdout.strip().splitlines()[-1])["items"]]
    # an overwhelming prior: the items most alike in text to the user's latest ones, the model breaking ties
    hist = [x.item_id for x in toy_ds.by_user()[user]]
    cp = ContentPrior(toy_ds, sorted(toy_ds.items))
    best = cp.scores([hist])[0]
    top = sorted(best, reverse=True)[4]
    assert all(best[sorted(toy_ds.items).index(i)] >= top - 1e-6 for i in got) and got != [x["item"] for x in plain]
    # batch mode takes it too; a negative weight is refused in one line
    preds = tmp_path / "preds.jsonl"
    r = _gen("--checkpoint", str(atomic_dir), "--task", "sequential", "--split", "test", "--output", str(preds),
             "--top-k", "2", "--beams", "4", "--content-prior", "2")
    assert r.returncode == 0, r.stderr
    assert len(preds.read_text().splitlines()) == len(toy_ds.users)
    r = _gen(*args, "--content-prior", "-2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--content-prior" in r.stderr


# -- training with the prior (train.py --content-prior) --------------------------------------------

@pytest.fixture(scope="module")
def prior_run(toy_dir, tmp_path_factory):
    """Sequential training with the prior at weight 2 (kinds next and candidates: the prior is for next only)."""
    return _tiny_run(toy_dir, tmp_path_factory.mktemp("content_trained") / "ckpt", index="atomic",
                     tasks="sequential", content_prior=2.0, pretokenize=True)


def _next_rows(run, toy_ds):
    """The run's next-item and candidate training rows, rendered again as the run rendered them."""
    from p5x.tasks import make_context
    from p5x.training import render_epochs

    ck = load_checkpoint(run, data=toy_ds)
    ctx = make_context(toy_ds, index_method="atomic", seed=0, index=ck.index, user_index=ck.user_index)
    rows = render_epochs(ctx, ["sequential"], 1, 0)
    return ck, ctx, rows


def test_the_training_bias_is_the_prior_of_the_prompt_history(prior_run, toy_ds):
    """AnswerPrior reads each next-item prompt's history from its item tokens: its bonus equals
    ContentPrior.scores of the history the prompt was rendered from; other rows get none."""
    from p5x.content import AnswerPrior
    from p5x.features import Featurizer, next_item_rows
    from p5x.iteminit import item_token_ids

    ck, ctx, rows = _next_rows(prior_run, toy_ds)
    items = list(ck.index.codes)
    cp = ContentPrior(toy_ds, items)
    tokens = item_token_ids(ck.tokenizer, ck.index)
    ap = AnswerPrior(cp, tokens, 2.0)
    f = Featurizer(ck.tokenizer, False, True, 256, 24, word_numbering=ck.config["word_numbering"])
    f.mark_next_items = True
    picked = [r for r in rows if r["kind"] == "next"][:12] + [r for r in rows if r["kind"] == "candidates"][:4]
    assert len(picked) == 16
    batch = f(picked)
    assert batch["prior_rows"].tolist() == [True] * 12 + [False] * 4
    assert next_item_rows(picked).tolist() == batch["prior_rows"].tolist()
    bias = ap(batch["input_ids"], batch["prior_rows"], len(ck.tokenizer) + 3)
    # the histories the rows were rendered from: the user's training sequence before the answer
    seqs = ctx.split.train
    hist = []
    for r in picked[:12]:
        seq = [x.item_id for x in seqs[r["user_id"]]]
        cut = max(k for k, x in enumerate(seq) if x == r["item_id"])  # toy sequences: the answer's last place
        hist.append(seq[:cut])
    want = 2.0 * cp.scores(hist)
    got = bias[:12][:, torch.tensor(tokens)].numpy()
    np.testing.assert_allclose(got, want, atol=2e-3)  # the table is float16
    assert want.any(axis=1).sum() >= 6  # most toy histories have text neighbours: the check has teeth
    assert not bias[12:].any()  # candidate prompts list items that are not a history
    others = torch.ones(bias.shape[1], dtype=torch.bool)
    others[torch.tensor(tokens)] = False
    assert not bias[:, others].any()  # nothing but item tokens moves


def test_the_model_adds_the_bias_to_the_first_answer_step_only(prior_run, toy_ds):
    ck, _, rows = _next_rows(prior_run, toy_ds)
    from p5x.content import AnswerPrior
    from p5x.features import Featurizer
    from p5x.iteminit import item_token_ids

    model = ck.model
    model.answer_prior = AnswerPrior(ContentPrior(toy_ds, list(ck.index.codes)),
                                     item_token_ids(ck.tokenizer, ck.index), 2.0)
    f = Featurizer(ck.tokenizer, False, True, 256, 24, word_numbering=ck.config["word_numbering"])
    f.mark_next_items = True
    batch = f([r for r in rows if r["kind"] == "next"][:6])
    batch.pop("task_ids")  # the trainer's, for its logging
    model.eval()
    with_bias = model(**batch)
    plain = model(**{k: v for k, v in batch.items() if k != "prior_rows"})
    bias = model.answer_prior(batch["input_ids"], batch["prior_rows"], plain.logits.shape[-1])
    assert bias.abs().sum() > 0
    torch.testing.assert_close(with_bias.logits[:, 0], plain.logits[:, 0] + bias)
    torch.testing.assert_close(with_bias.logits[:, 1:], plain.logits[:, 1:])
    assert with_bias.loss != plain.loss
    # no state of its own reaches a checkpoint
    assert not any(k.startswith("answer_prior") for k in model.state_dict())


def test_a_prior_trained_checkpoint_ranks_with_its_prior_by_default(prior_run, toy_ds, tmp_path, capsys):
    from test_evaluate import _gen

    cfg = json.loads((prior_run / "p5x_config.json").read_text())
    assert cfg["content_prior"] == {"weight": 2.0, "items_back": 3, "decay": 0.5}
    key = json.loads((prior_run / "pretokenized" / "key.json").read_text())
    assert key["kind_column"] is True
    out = tmp_path / "ev"
    assert evaluate_main(["--checkpoint", str(prior_run), "--tasks", "sequential", "--templates", "seen",
                          "--template-ids", "sequential-1", "--beams", "5", "--max-users", "8", "--no-baselines",
                          "--no-progress", "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    protocols = [r["protocol"] for r in res["rows"] if r["task"] == "sequential/next"]
    assert protocols == ["full ranking, model alone (trained with 2 x content prior)",
                         "full ranking + 2 x content prior (3 items back, decay 0.5)"]
    assert res["meta"]["content_prior_trained"]["weight"] == 2.0
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(prior_run), "--tasks", "sequential", "--templates", "seen",
                          "--template-ids", "sequential-1", "--beams", "5", "--max-users", "8", "--no-baselines",
                          "--no-progress", "--content-prior", "0", "--out", str(tmp_path / "off")]) == 0
    off = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert [r["protocol"] for r in off["rows"] if r["task"] == "sequential/next"] == \
        ["full ranking, model alone (trained with 2 x content prior)"]
    # generate.py: the checkpoint's weight unless told otherwise
    user = sorted(toy_ds.users)[0]
    args = ("--checkpoint", str(prior_run), "--task", "sequential", "--user", user, "--json", "--top-k", "5")
    default, explicit, none = _gen(*args), _gen(*args, "--content-prior", "2"), _gen(*args, "--content-prior", "0")
    assert default.returncode == explicit.returncode == none.returncode == 0
    assert default.stdout == explicit.stdout


def test_training_with_the_prior_refuses_what_it_cannot_serve(toy_dir, tmp_path):
    from p5x.training import TrainConfig, train

    base = dict(data=str(toy_dir), output=str(tmp_path / "x"), use_cpu=True, tasks="sequential")
    with pytest.raises(ConfigError, match="--index atomic"):
        TrainConfig(**base, content_prior=2.0).validate()
    with pytest.raises(ConfigError, match="--content-prior"):
        TrainConfig(**base, index="atomic", content_prior=-1.0).validate()
    with pytest.raises(ConfigError, match="no sequential"):
        TrainConfig(**{**base, "tasks": "direct"}, index="atomic", content_prior=2.0).validate()
    with pytest.raises(ConfigError, match="encoder-decoder"):
        train(TrainConfig(**base, index="atomic", content_prior=2.0, model="llama-tiny"))
    assert not (tmp_path / "x").exists()


def test_training_with_the_prior_resumes_exactly_and_changes_what_is_learnt(toy_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from p5x.training import TrainConfig, train

    def cfg(out, **kw):
        return TrainConfig(data=str(toy_dir), output=str(out), epochs=1, batch_size=16, max_steps=6, save_steps=3,
                           logging_steps=2, use_cpu=True, vocab_size=300, lr=3e-3, max_source_len=256,
                           max_target_len=24, index="atomic", tasks="sequential", pretokenize=True, **kw)

    full = train(cfg(tmp_path / "full", content_prior=2.0))
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(full / "checkpoint-3", killed / "checkpoint-3")  # killed after its step-3 checkpoint
    resumed = train(cfg(killed, content_prior=2.0, resume=True))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and not any(k.startswith("answer_prior") for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    plain = load_file(str(train(cfg(tmp_path / "plain")) / "model.safetensors"))
    assert any(not torch.allclose(plain[k], a[k], atol=1e-4) for k in a)  # the bonus reaches the gradients
