"""End-to-end tests of evaluation and generate.py on a tiny checkpoint trained on the toy dataset."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
import sys
from pathlib import Path

import pytest
import torch

from p5x.checkpoint import load_checkpoint
from p5x.evaluate import _rank_by_beams, _rating_metrics, main as evaluate_main, parse_number
from p5x.inference import build_item_trie, rank_items
from p5x.templates import load_templates
from p5x.toydata import make_toy_dataset
from p5x.training import TrainConfig, train

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _tiny_run(toy_dir, out, **kw):
    """Six steps of a tiny T5 on the toy data: enough to load, rank and evaluate, not to be good."""
    return train(TrainConfig(data=str(toy_dir), output=str(out), epochs=1, batch_size=16, max_steps=6,
                             save_steps=100, logging_steps=2, use_cpu=True, vocab_size=300, lr=3e-3,
                             max_source_len=256, max_target_len=24, **kw))


@pytest.fixture(scope="module")
def ckpt_dir(toy_dir, tmp_path_factory):
    return _tiny_run(toy_dir, tmp_path_factory.mktemp("eval") / "ckpt")


def test_parse_and_rating_fallback():
    assert parse_number("4.5 stars") == 4.5 and parse_number("five") is None
    # an unparsable output is scored as the fallback (training mean), never dropped
    m = _rating_metrics(["5", "oops", "9"], [5.0, 3.0, 4.0], fallback=4.0)
    assert m["unparsable"] == 1 and m["n"] == 3
    assert m["MAE"] == pytest.approx((0 + 1 + 1) / 3)  # 9 is clipped to 5


def test_rank_by_beams_puts_named_candidates_first():
    assert _rank_by_beams(["x", "c", "a"], ["a", "b", "c"]) == ["c", "a", "b"]


def test_ranked_items_are_real_and_unique(ckpt_dir, toy_ds):
    ck = load_checkpoint(ckpt_dir, data=toy_ds)
    trie = build_item_trie(ck)
    user = next(iter(ck.user_index.codes))
    prompts = [f"what will user {ck.user_index.text(user)} buy next ?"] * 2
    ranked, invalid = rank_items(ck, prompts, trie, beams=8, progress=False)
    assert invalid == 0 and len(ranked) == 2
    for row in ranked:
        assert row and len(row) == len(set(row)) and all(i in toy_ds.items for i in row)


@pytest.fixture(scope="module")
def atomic_ckpt_dir(toy_dir, tmp_path_factory):
    return _tiny_run(toy_dir, tmp_path_factory.mktemp("eval_atomic") / "ckpt", index="atomic", tasks="sequential")


def test_one_token_fast_path_returns_what_beam_search_returns(atomic_ckpt_dir, toy_ds, monkeypatch):
    # one-token ids on T5 skip HF's generate; the lists must be exactly beam search's, in its order,
    # over a batch whose prompts differ in length (padding) and with whole-word ids in the input
    from p5x import inference

    ck = load_checkpoint(atomic_ckpt_dir, data=toy_ds)
    trie = build_item_trie(ck)
    assert trie.max_len == 2 and not ck.model.decoder_only
    users = sorted(ck.user_index.codes)[:5]
    prompts = [f"what will user {ck.user_index.text(u)} buy next ?" for u in users]
    prompts += [f"user {ck.user_index.text(users[0])} bought {ck.index.text(i)} , what next ?"
                for i in sorted(toy_ds.items)[:3]]
    calls = []
    real = inference.one_token_beams
    monkeypatch.setattr(inference, "one_token_beams", lambda *a: calls.append(1) or real(*a))
    fast, bad_fast = rank_items(ck, prompts, trie, beams=8, batch_size=3, progress=False)
    assert calls, "the fast path was not taken"
    slow, bad_slow = rank_items(ck, prompts, trie, beams=8, batch_size=3, progress=False, fast=False)
    assert len(calls) == 3  # the reference run went through generate
    assert bad_fast == bad_slow == 0
    assert fast == slow
    assert all(len(r) == 8 for r in fast)


@pytest.fixture(scope="module")
def llama_ckpt_dir(toy_dir, tmp_path_factory):
    return _tiny_run(toy_dir, tmp_path_factory.mktemp("eval_llama") / "ckpt", model="llama-tiny",
                     tasks="sequential")


@pytest.mark.parametrize("which", ["ckpt_dir", "llama_ckpt_dir"])
def test_multi_token_fast_path_returns_what_beam_search_returns(which, toy_ds, monkeypatch, request):
    # three-token ids (random indexing) on T5 or a LLaMA go through trie_beams; same lists as HF's
    # generate, with whole-word ids, padded prompts and a per-prompt exclusion of the user's history
    from p5x import inference

    ck = load_checkpoint(request.getfixturevalue(which), data=toy_ds)
    trie = build_item_trie(ck)
    assert trie.max_len == 4 and ck.model.decoder_only == (which == "llama_ckpt_dir")
    by_user = toy_ds.by_user()
    users = sorted(ck.user_index.codes)[:4]
    prompts = [f"what will user {ck.user_index.text(u)} buy next ?" for u in users]
    prompts += [f"user {ck.user_index.text(users[0])} bought {ck.index.text(i)} , what next ?"
                for i in sorted(toy_ds.items)[:2]]
    history = [[x.item_id for x in by_user[u]] for u in users] + [[], sorted(toy_ds.items)[:5]]
    calls = []
    real = inference.trie_beams
    monkeypatch.setattr(inference, "trie_beams", lambda *a: calls.append(1) or real(*a))
    for exclude in (None, history):
        fast, bad_fast = rank_items(ck, prompts, trie, beams=8, batch_size=4, progress=False, exclude=exclude)
        assert len(calls) == 2
        slow, bad_slow = rank_items(ck, prompts, trie, beams=8, batch_size=4, progress=False, fast=False,
                                    exclude=exclude)
        assert len(calls) == 2  # the reference run went through generate
        calls.clear()
        assert bad_fast == bad_slow == 0
        assert fast == slow and all(len(r) == 8 for r in fast)
        if exclude is not None:
            assert all(not set(r) & set(h) for r, h in zip(fast, history))


def test_evaluate_cli_writes_table_with_baselines(ckpt_dir, toy_ds, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = evaluate_main(["--checkpoint", str(ckpt_dir), "--max-users", "4", "--beams", "5",
                        "--baseline-epochs", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text())
    meta, rows = res["meta"], res["rows"]
    assert meta["split"] == "test" and meta["data_hash"] == toy_ds.data_hash and meta["commit"]
    assert meta["seed"] == 0 and meta["indexing"] == "random" and meta["templates"]
    tasks = {(r["task"], r["templates"]) for r in rows}
    assert ("sequential/next", "seen") in tasks and ("sequential/next", "unseen") in tasks
    assert {"rating/rating", "explanation/explain", "review/summary", "direct/yesno"} <= {t for t, _ in tasks}
    models = {r["model"] for r in rows}
    assert {"popularity", "sasrec"} <= models
    seq = next(r for r in rows if r["task"] == "sequential/next" and r["templates"] == "seen")
    assert seq["metrics"]["invalid"] == 0.0 and 0.0 <= seq["metrics"]["NDCG@10"] <= 1.0
    assert "| p5x (t5-tiny) |" in capsys.readouterr().out
    assert (out / "metrics.md").read_text().count("\n") > 5
    # the baselines are scored on the same 4 users as the model, not on every test user
    from p5x.baselines import BaselineConfig, run_baselines

    pop = next(r for r in rows if r["model"] == "popularity" and r["task"] == "sequential")
    same = run_baselines(toy_ds, BaselineConfig(tasks=("sequential",), epochs=1, dim=16, layers=1, progress=False,
                                                max_users=4))
    everyone = run_baselines(toy_ds, BaselineConfig(tasks=("sequential",), epochs=1, dim=16, layers=1,
                                                    progress=False))
    assert pop["metrics"] == next(r for r in same if r["model"] == "popularity")["metrics"]
    assert pop["metrics"] != next(r for r in everyone if r["model"] == "popularity")["metrics"]


def _gen(*args):
    return subprocess.run([sys.executable, str(REPO / "generate.py"), *args], capture_output=True, text=True,
                          timeout=300)


def test_generate_cli(ckpt_dir, toy_ds, tmp_path):
    user = next(iter(toy_ds.users))
    r = _gen("--checkpoint", str(ckpt_dir), "--task", "sequential", "--user", user, "--top-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(res["items"]) == 3 and all(x["item"] in toy_ds.items for x in res["items"])
    # --exclude-seen: still --top-k items, none the user already has
    have = {x.item_id for x in toy_ds.by_user()[user]}
    r = _gen("--checkpoint", str(ckpt_dir), "--task", "sequential", "--user", user, "--top-k", "5", "--beams", "5",
             "--exclude-seen", "--json")
    assert r.returncode == 0, r.stderr
    got = [x["item"] for x in json.loads(r.stdout.strip().splitlines()[-1])["items"]]
    assert len(got) == 5 and not set(got) & have
    item = next(iter(toy_ds.items))
    r = _gen("--checkpoint", str(ckpt_dir), "--task", "direct", "--user", user, "--candidates",
             ",".join(list(toy_ds.items)[:4]), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["best"] in toy_ds.items and len(res["scores"]) == 4
    # a candidates template: generation among the listed items, every one of them ranked once
    cands = list(toy_ds.items)[3:9]
    r = _gen("--checkpoint", str(ckpt_dir), "--task", "direct", "--user", user, "--candidates",
             ",".join(cands + cands[:1]), "--template", "direct-5", "--beams", "4", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    ranked = [x["item"] for x in res["ranked"]]
    assert sorted(ranked) == sorted(cands) and res["best"] == ranked[0] and res["template"] == "direct-5"
    # the first four are the beams of a search over the six alone; the other two follow in list order
    ck = load_checkpoint(ckpt_dir, data=toy_ds)
    t = load_templates()["direct"].by_id["direct-5"]
    fields = {"user": ck.user_index.text(user), "candidates": " ".join(ck.index.text(c) for c in cands)}
    want = rank_items(ck, [t.render(defaultdict(str, fields))[0]], build_item_trie(ck, cands), 4, progress=False)[0][0]
    assert ranked[:4] == want and ranked[4:] == [c for c in cands if c not in want]
    # the same question printed for a person: one numbered line per candidate, best first
    r = _gen("--checkpoint", str(ckpt_dir), "--task", "direct", "--user", user, "--candidates",
             ",".join(cands), "--template", "direct-5", "--beams", "4")
    assert r.returncode == 0, r.stderr
    lines = [x.split() for x in r.stdout.splitlines() if x.strip()[:3].strip().rstrip(".").isdigit()]
    assert [x[1] for x in lines] == ranked
    # unknown user / item: one line, exit 2
    for args in (("--user", "nobody", "--item", item), ("--user", user, "--item", "no-such-item")):
        r = _gen("--checkpoint", str(ckpt_dir), "--task", "rating", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
    # batch mode writes JSON lines atomically
    preds = tmp_path / "preds.jsonl"
    r = _gen("--checkpoint", str(ckpt_dir), "--task", "sequential", "--split", "test", "--output", str(preds),
             "--top-k", "2", "--beams", "4")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) == len(toy_ds.users) and all(len(x["items"]) == 2 for x in lines)


def test_checkpoint_from_other_dataset_is_refused(ckpt_dir, tmp_path):
    other = tmp_path / "other"
    make_toy_dataset(other, seed=3)
    r = subprocess.run([sys.executable, "-m", "p5x.evaluate", "--checkpoint", str(ckpt_dir), "--data", str(other),
                        "--no-baselines"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 2 and "another dataset" in r.stderr and r.stderr.count("\n") == 1


def test_per_kind_and_template_ids_choose_templates(ckpt_dir, toy_ds):
    from p5x.evaluate import EvalConfig, Evaluator

    ck = load_checkpoint(ckpt_dir, data=toy_ds)
    one = Evaluator(ck, toy_ds, EvalConfig(ckpt_dir, per_kind=1))
    every = Evaluator(ck, toy_ds, EvalConfig(ckpt_dir, per_kind=0))
    assert one.template_ids("sequential", "seen") == ["sequential-1", "sequential-8", "sequential-11"]
    assert len(every.template_ids("sequential", "seen")) == 12
    assert one.template_ids("sequential", "unseen") == every.template_ids("sequential", "unseen") == ["sequential-13"]
    named = Evaluator(ck, toy_ds, EvalConfig(ckpt_dir, per_kind=0, template_ids=("direct-2", "direct-8")))
    assert named.template_ids("direct", "seen") == ["direct-2"] and named.template_ids("direct", "unseen") == ["direct-8"]
    few = Evaluator(ck, toy_ds, EvalConfig(ckpt_dir, max_users=3))
    assert few.users() == sorted(few.ctx.split.eval_users("test"))[:3]


def test_all_mixture_includes_preference_when_data_allows(ckpt_dir, toy_ds):
    cfg = json.loads((ckpt_dir / "p5x_config.json").read_text())
    assert toy_ds.has("rating") and toy_ds.has("title")
    assert cfg["tasks"] == ["rating", "sequential", "direct", "explanation", "review", "preference"]


def test_prediction_diversity_cli(ckpt_dir, toy_dir, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "prediction_diversity.py"), "--checkpoint", str(ckpt_dir),
                        "--data", str(toy_dir), "--users", "6", "--beams", "4"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["users"] == 6 and 1 <= res["distinct_top1"] <= 6 and 1 <= res["distinct_in_top4"] <= 24
    assert 0 <= res["share_of_slots_in_100_most_popular"] <= 1 and 0 <= res["share_of_slots_from_own_history"] <= 1
    assert 0 <= res["share_top1_is_last_history_item"] <= res["share_top1_from_own_history"] <= 1
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "prediction_diversity.py"), "--checkpoint",
                          str(ckpt_dir), "--data", str(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


def test_atomic_ids_train_and_rank(toy_dir, toy_ds, tmp_path):
    """--index atomic: every item one token of its own; ranking still returns real, distinct items."""
    cfg = TrainConfig(data=str(toy_dir), output=str(tmp_path / "atomic"), tasks="sequential,direct", epochs=1,
                      batch_size=16, max_steps=3, save_steps=100, use_cpu=True, vocab_size=300,
                      index="atomic", max_source_len=256, max_target_len=24)
    ck = load_checkpoint(train(cfg), data=toy_ds)
    assert ck.index.method == "atomic" and {len(c) for c in ck.index.codes.values()} == {1}
    ids = ck.tokenizer.convert_tokens_to_ids(sorted(ck.index.pieces()))
    assert len(set(ids)) == len(toy_ds.items) and ck.tokenizer.unk_token_id not in ids
    user = next(iter(ck.user_index.codes))
    ranked, invalid = rank_items(ck, [f"what will user {ck.user_index.text(user)} buy next ?"],
                                 build_item_trie(ck), beams=6, progress=False)
    assert invalid == 0 and len(ranked[0]) == len(set(ranked[0])) >= 6
    assert all(i in toy_ds.items for i in ranked[0])


def test_ranking_without_history_is_the_ranking_of_the_rest(atomic_ckpt_dir, ckpt_dir, toy_ds):
    # one-token ids: each item's score does not depend on the others, so excluding k items must give
    # the unexcluded top-(beams+k) with those items taken out, on the fast path and through generate
    ck = load_checkpoint(atomic_ckpt_dir, data=toy_ds)
    trie = build_item_trie(ck)
    users = sorted(ck.user_index.codes)[:4]
    prompts = [f"what will user {ck.user_index.text(u)} buy next ?" for u in users]
    wide, _ = rank_items(ck, prompts, trie, beams=11, batch_size=3, progress=False)
    exclude = [set(r[:2]) | {r[5]} for r in wide]
    for fast in (True, False):
        got, bad = rank_items(ck, prompts, trie, beams=8, batch_size=3, progress=False, fast=fast, exclude=exclude)
        assert bad == 0
        assert got == [[i for i in r if i not in ex][:8] for r, ex in zip(wide, exclude)]
    # a prompt left with 3 items for 8 beams gets those 3 and none of its excluded items (the search
    # fills its other beams with masked ones, which rank_items drops)
    keep = set(wide[1][4:7])
    short = [set(), set(ck.index.codes) - keep, set(), set()]
    for fast in (True, False):
        got, bad = rank_items(ck, prompts, trie, beams=8, batch_size=3, progress=False, fast=fast, exclude=short)
        assert bad == 0 and got[1] == wide[1][4:7] and got[0] == wide[0][:8]
    # multi-token ids: the same search as over a catalogue built without the excluded items
    ck = load_checkpoint(ckpt_dir, data=toy_ds)
    trie = build_item_trie(ck)
    prompts = [f"what will user {ck.user_index.text(u)} buy next ?" for u in users]
    free, _ = rank_items(ck, prompts, trie, beams=6, batch_size=1, progress=False)
    exclude = [set(r[:3]) for r in free]
    got, bad = rank_items(ck, prompts, trie, beams=6, batch_size=4, progress=False, exclude=exclude)
    assert bad == 0 and all(len(r) == 6 for r in got)
    for p, ex, row in zip(prompts, exclude, got):
        rest = build_item_trie(ck, [i for i in ck.index.codes if i not in ex])
        assert row == rank_items(ck, [p], rest, beams=6, progress=False)[0][0]
        assert not set(row) & ex
    with pytest.raises(ValueError):
        rank_items(ck, prompts, trie, exclude=exclude[:1], progress=False)


def test_ranking_among_candidates_is_the_ranking_of_the_candidates(atomic_ckpt_dir, ckpt_dir, toy_ds):
    # allow = a candidate list per prompt: one-token ids give the full ranking cut to the candidates,
    # on the fast path and through generate; multi-token ids the search over a catalogue of them
    ck = load_checkpoint(atomic_ckpt_dir, data=toy_ds)
    trie = build_item_trie(ck)
    users = sorted(ck.user_index.codes)[:4]
    prompts = [f"what will user {ck.user_index.text(u)} buy next ?" for u in users]
    full, _ = rank_items(ck, prompts, trie, beams=trie.num_items, batch_size=3, progress=False)
    # candidates: every other item of the full ranking from the second on (the top item never one),
    # and for the last prompt only 3 items, fewer than the beams
    allow = [set(r[1::2]) for r in full[:3]] + [set(full[3][4:7])]
    for fast in (True, False):
        got, bad = rank_items(ck, prompts, trie, beams=5, batch_size=3, progress=False, fast=fast, allow=allow)
        assert bad == 0
        assert got == [[i for i in r if i in a][:5] for r, a in zip(full, allow)]
    assert [len(r) for r in got] == [5, 5, 5, 3]
    ck = load_checkpoint(ckpt_dir, data=toy_ds)
    trie = build_item_trie(ck)
    prompts = [f"what will user {ck.user_index.text(u)} buy next ?" for u in users]
    free, _ = rank_items(ck, prompts, trie, beams=6, batch_size=1, progress=False)
    allow = [set(sorted(ck.index.codes)[k::3]) - set(r[:1]) for k, r in enumerate(free)]
    got, bad = rank_items(ck, prompts, trie, beams=6, batch_size=4, progress=False, allow=allow)
    assert bad == 0 and all(len(r) == 6 for r in got)
    for p, al, row in zip(prompts, allow, got):
        assert row == rank_items(ck, [p], build_item_trie(ck, sorted(al)), beams=6, progress=False)[0][0]
        assert set(row) <= al
    with pytest.raises(ValueError):
        rank_items(ck, prompts, trie, allow=allow[:1], progress=False)
    with pytest.raises(ValueError):
        rank_items(ck, prompts, trie, allow=allow, exclude=allow, progress=False)


def test_evaluate_cli_excluding_history(ckpt_dir, toy_ds, tmp_path):
    out = tmp_path / "eval"
    rc = evaluate_main(["--checkpoint", str(ckpt_dir), "--tasks", "sequential", "--max-users", "4",
                        "--beams", "5", "--baseline-epochs", "1", "--exclude-history", "--out", str(out),
                        "--no-progress"])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["meta"]["exclude_history"] is True
    full = [r for r in res["rows"] if r["task"].startswith("sequential") and "full ranking" in r["protocol"]]
    assert {r["model"] for r in full} >= {"p5x (t5-tiny)", "popularity", "transition"}
    assert all(r["protocol"] == "full ranking (history excluded)" for r in full)


def test_evaluate_cli_by_history_length(ckpt_dir, toy_ds, tmp_path, capsys):
    out = tmp_path / "eval"
    # two next-item wordings: the model's rows pool 2 prompts a user, and their labels still count users
    rc = evaluate_main(["--checkpoint", str(ckpt_dir), "--tasks", "sequential", "--template-ids",
                        "sequential-1,sequential-2", "--per-kind", "2", "--templates", "seen", "--beams", "5",
                        "--baseline-epochs", "1", "--by-history", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "| full ranking, users with " in capsys.readouterr().out
    res = json.loads((out / "metrics.json").read_text())
    assert res["meta"]["by_history"] is True
    groups, users = {}, None
    for model in ("p5x (t5-tiny)", "popularity", "sasrec"):
        rows = [r for r in res["rows"] if r["model"] == model and r["task"].startswith("sequential")
                and r["protocol"].startswith("full ranking")]
        whole, parts = rows[0], rows[1:]
        assert whole["protocol"] == "full ranking" and len(parts) > 1
        if model.startswith("p5x"):
            assert whole["template_ids"] == ["sequential-1", "sequential-2"]
            users = whole["n"] // 2  # the model's rows count prompts, two a user
        n = whole.get("n", users)
        assert sum(r["n"] for r in parts) == n
        for k in ("HR@10", "NDCG@10"):
            assert sum(r["n"] * r["metrics"][k] for r in parts) / n == pytest.approx(whole["metrics"][k])
        groups[model] = [r["protocol"] for r in parts]
    # the model's users fall in the groups p5x.baselines (tested against the split) puts them in, and
    # its labels count users, not prompts
    assert groups["p5x (t5-tiny)"] == groups["popularity"] == groups["sasrec"]


def test_history_len_cuts_what_the_prompts_show(ckpt_dir, toy_ds, tmp_path, capsys):
    import re

    from p5x import evaluate as E
    from p5x.tasks import render

    ck = load_checkpoint(ckpt_dir, data=toy_ds)
    ev = E.Evaluator(ck, toy_ds, E.EvalConfig(ckpt_dir, history_len=1, progress=False))
    rows = render(ev.ctx, ["sequential"], "test", templates=["sequential-1"])
    for inp, user in zip(rows["inputs"], rows["user_id"]):  # one item: the user's most recent
        shown = [ck.index.lookup(m) for m in re.findall(r"(?:<i\d+_\d+>)+", inp)]
        assert shown == [ev.ctx.split.history_ids(user, "test")[-1]], inp
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(ckpt_dir), "--tasks", "sequential,direct", "--templates", "seen",
                          "--template-ids", "sequential-1,direct-1", "--beams", "5", "--history-len", "1",
                          "--no-baselines", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["meta"]["history_len"] == 1
    cut = ", prompts show the last 1 history item(s)"
    assert {r["task"].split("/")[0] for r in res["rows"] if r["protocol"].endswith(cut)} == {"sequential"}
    assert [r for r in res["rows"] if r["task"].startswith("direct")]  # direct prompts show no history
    for bad in ("-1", "21"):
        assert evaluate_main(["--checkpoint", str(ckpt_dir), "--history-len", bad, "--no-progress"]) == 2
        assert "--history-len: expected 1-20" in capsys.readouterr().err


@pytest.mark.parametrize("atomic", [True, False])
def test_a_prompt_with_few_items_left_does_not_narrow_its_batch(atomic, atomic_ckpt_dir, ckpt_dir, toy_ds):
    ck = load_checkpoint(atomic_ckpt_dir if atomic else ckpt_dir, data=toy_ds)
    trie = build_item_trie(ck)
    users = sorted(ck.user_index.codes)[:3]
    prompts = [f"what will user {ck.user_index.text(u)} buy next ?" for u in users]
    items = sorted(ck.index.codes)
    alone, _ = rank_items(ck, prompts[:1], trie, beams=8, progress=False)
    # prompt 1 may have only 3 items, prompt 2 none at all
    exclude = [set(), set(items[3:]), set(items)]
    got, bad = rank_items(ck, prompts, trie, beams=8, batch_size=3, progress=False, exclude=exclude)
    assert got[0] == alone[0] and len(got[0]) == 8
    assert sorted(got[1]) == items[:3] and got[2] == []
    assert bad == 0  # the beams a short prompt cannot fill are not the model's invalid output


def test_evaluate_excludes_each_users_own_history(ckpt_dir, toy_ds, monkeypatch):
    from p5x import evaluate as E
    from p5x.tasks import render

    seen = {}
    real = E.rank_items

    def spy(ckpt, prompts, trie, *a, exclude=None, **kw):
        seen["exclude"] = exclude
        return real(ckpt, prompts, trie, *a, exclude=exclude, **kw)

    monkeypatch.setattr(E, "rank_items", spy)
    ck = load_checkpoint(ckpt_dir, data=toy_ds)
    for split in ("valid", "test"):
        ev = E.Evaluator(ck, toy_ds, E.EvalConfig(ckpt_dir, split=split, max_users=5, beams=4, exclude_history=True,
                                                  progress=False))
        rows = render(ev.ctx, ["sequential"], split, templates=["sequential-1"], users=ev.users())
        ev.next_items(rows)
        want = [{x.item_id for x in ev.ctx.split.history(u, split)} for u in rows["user_id"]]
        assert [set(x) for x in seen["exclude"]] == want and all(want)
        assert (split == "test") == any(ev.ctx.split.valid[u].item_id in w for u, w in zip(rows["user_id"], want))
