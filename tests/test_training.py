"""Training tests: tiny T5/LLaMA runs, exact kill-and-resume, the CLI, loss falls, DeepSpeed ZeRO-2 on CPU."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import numpy as np
import torch

from p5x.errors import ConfigError
from safetensors.torch import load_file

from p5x.checkpoint import load_checkpoint
from p5x.errors import CheckpointError
from p5x.schema import load_dataset
from p5x.toydata import make_toy_dataset
from p5x.training import TrainConfig, main, parse_args, train

sys.path.insert(0, str(Path(__file__).parent))
from p5x_rows import make_rows  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _cfg(data, out, **kw):
    base = dict(data=str(data), output=str(out), epochs=1, batch_size=8, max_steps=4, save_steps=2,
                logging_steps=1, use_cpu=True, vocab_size=200, lr=3e-3, max_source_len=64, max_target_len=16)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("model", ["t5-tiny", "llama-tiny"])
def test_tiny_models_train_and_save(toy_dir, tmp_path, model):
    out = train(_cfg(toy_dir, tmp_path / model, model=model), make_rows=make_rows)
    for f in ("model.safetensors", "p5x_config.json", "item_index.json", "user_index.json", "tokenizer.json",
              "loss_curve.png"):
        assert (out / f).is_file(), f
    assert list(out.rglob("events.out.tfevents*")), "no TensorBoard log"
    cfg = json.loads((out / "p5x_config.json").read_text())
    assert cfg["backbone"] == model and cfg["whole_word"] and cfg["data_hash"] == load_dataset(toy_dir).data_hash
    hist = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("loss/sequential" in h and "loss/direct" in h for h in hist)
    ck = load_checkpoint(out, data=toy_dir)
    assert ck.model.word_embed is not None and ck.index is not None
    other = tmp_path / "other"
    make_toy_dataset(other, seed=1)
    with pytest.raises(CheckpointError):
        load_checkpoint(out, data=other)


def test_resume_matches_uninterrupted_run(toy_dir, tmp_path):
    full = train(_cfg(toy_dir, tmp_path / "full", max_steps=6, save_steps=3), make_rows=make_rows)
    killed = tmp_path / "killed"
    killed.mkdir()
    # a run killed after its step-3 checkpoint leaves just that checkpoint behind
    shutil.copytree(full / "checkpoint-3", killed / "checkpoint-3")
    resumed = train(_cfg(toy_dir, killed, max_steps=6, save_steps=3, resume=True), make_rows=make_rows)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    start = load_file(str(full / "checkpoint-3" / "model.safetensors"))
    assert any(not torch.equal(start[k], a[k]) for k in a)  # steps 4-6 did change the weights
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_recency_word_numbering_reaches_the_cache_key_and_the_checkpoint(toy_dir, toy_ds, tmp_path, capsys):
    from p5x.checkpoint import load_checkpoint
    from p5x.training import cache_key

    plain = cache_key(_cfg("d", tmp_path), toy_ds)
    rec = _cfg(toy_dir, tmp_path / "rec", word_numbering="recency", max_steps=2, save_steps=100)
    assert "word_numbering" not in plain  # pre-tokenized caches from before the option stay valid
    assert cache_key(rec, toy_ds)["word_numbering"] == "recency"
    ck = load_checkpoint(train(rec, make_rows=make_rows), data=toy_ds)
    assert ck.featurizer.word_numbering == "recency" and ck.config["word_numbering"] == "recency"
    item = ck.index.text(sorted(toy_ds.items)[0])
    words = ck.featurizer.encode_prompts([f"after {item} {item} , what next ?"])["whole_word_ids"][0].tolist()
    assert ck.config["max_words"] - 1 in words and ck.config["max_words"] - 2 in words
    assert main(["--word-numbering", "recency", "--whole-word-embeddings", "off"]) == 2
    assert "needs --whole-word-embeddings on" in capsys.readouterr().err
    assert main(["--word-numbering", "recency", "--max-words", "20"]) == 2
    assert "--word-numbering: 'recency' needs max words" in capsys.readouterr().err


def test_cli_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--no-such-flag"])
    assert e.value.code == 2
    assert main(["--index", "alphabetical"]) == 2
    assert "error: --index" in capsys.readouterr().err
    assert main(["--tasks", "sequentail"]) == 2
    assert "sequential" in capsys.readouterr().err


@pytest.mark.slow
def test_loss_falls_on_planted_signal(toy_dir, tmp_path):
    out = train(_cfg(toy_dir, tmp_path / "long", epochs=4, max_steps=100, save_steps=1000, logging_steps=10),
                make_rows=make_rows)
    losses = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="deepspeed launcher not installed")
@pytest.mark.skipif(importlib.util.find_spec("p5x.tasks") is None, reason="p5x.tasks not available yet")
def test_deepspeed_zero2_cpu(toy_dir, tmp_path):
    out = tmp_path / "ds"
    cmd = ["deepspeed", "--master_port", "29561", "--num_gpus", "1", str(REPO / "train.py"),
           "--data", str(toy_dir), "--tasks", "sequential,rating", "--model", "t5-tiny", "--output", str(out),
           "--max-steps", "3", "--batch-size", "4", "--save-steps", "2", "--vocab-size", "200",
           "--deepspeed", str(REPO / "p5x/configs/ds_zero2.json"), "--use-cpu"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-2").is_dir()
    load_checkpoint(out, data=toy_dir)


def test_trains_on_rendered_tasks(toy_dir, tmp_path):
    """The default row source: p5x.tasks.render, re-drawn per epoch (here 2 epochs, 3 steps)."""
    out = train(_cfg(toy_dir, tmp_path / "tasks", tasks="sequential,direct", epochs=2, max_steps=3, save_steps=10))
    cfg = json.loads((out / "p5x_config.json").read_text())
    assert cfg["tasks"] == ["sequential", "direct"] and cfg["templates_hash"]
    ck = load_checkpoint(out, data=toy_dir)
    p = ck.featurizer.encode_prompts(["what will user " + ck.user_index.text(next(iter(ck.user_index.codes))) + " buy ?"])
    assert ck.model.generate(**p, max_new_tokens=4, do_sample=False).shape[0] == 1


def test_kind_counts_reach_the_rendered_rows_and_the_cache_key(toy_ds, tmp_path, capsys):
    from collections import Counter

    from p5x.split import time_split
    from p5x.training import cache_key, task_rows

    cfg = _cfg("d", tmp_path, tasks="sequential", kind_counts="sequential.next=7,sequential.yesno=0")
    kinds = Counter(task_rows(toy_ds, cfg)[2]["kind"])
    n_users = sum(len(xs) >= 2 for xs in time_split(toy_ds).train.values())
    assert kinds == {"next": 7 * n_users, "candidates": 5 * n_users}
    plain = cache_key(_cfg("d", tmp_path, tasks="sequential"), toy_ds)
    assert "kind_counts" not in plain  # pre-tokenized caches from before the option stay valid
    assert cache_key(cfg, toy_ds)["kind_counts"] == cfg.kind_counts and cache_key(cfg, toy_ds) != plain
    assert main(["--kind-counts", "sequential.nxt=2"]) == 2
    assert "did you mean next" in capsys.readouterr().err
    assert main(["--tasks", "preference", "--shots", "8", "--kind-counts", "sequential.next=2"]) == 2


def test_history_dropout_reaches_the_rows_and_the_cache_key(toy_ds, tmp_path, capsys):
    from p5x.training import cache_key, task_rows

    counts = "sequential.next=10,sequential.candidates=0,sequential.yesno=0"
    plain = _cfg("d", tmp_path, tasks="sequential", kind_counts=counts)
    thin = _cfg("d", tmp_path, tasks="sequential", kind_counts=counts, history_dropout=0.6)
    words = lambda cfg: sum(len(s.split()) for s in task_rows(toy_ds, cfg)[2]["inputs"])  # noqa: E731
    assert words(thin) < words(plain)
    assert "history_dropout" not in cache_key(plain, toy_ds)  # caches from before the option stay valid
    assert cache_key(thin, toy_ds)["history_dropout"] == 0.6
    for bad in ("1", "-0.1"):
        assert main(["--history-dropout", bad]) == 2
        assert "--history-dropout: expected a probability" in capsys.readouterr().err
    assert main(["--history-dropout", "0.2", "--tasks", "preference", "--shots", "8"]) == 2
    assert "not used with --shots" in capsys.readouterr().err
    assert main(["--history-dropout", "0.2", "--tasks", "rating,direct"]) == 2
    assert "--tasks has no sequential" in capsys.readouterr().err
    weighted = _cfg("d", tmp_path, tasks="sequential", cut_weighting="position")
    assert "cut_weighting" not in cache_key(plain, toy_ds) and cache_key(weighted, toy_ds)["cut_weighting"] == "position"
    assert main(["--cut-weighting", "sasrec"]) == 2
    assert "--cut-weighting: expected user or position" in capsys.readouterr().err
    assert main(["--cut-weighting", "position", "--tasks", "rating,direct"]) == 2
    assert "--tasks has no sequential" in capsys.readouterr().err


def test_next_first_epochs_hold_next_item_prompts_only(toy_ds, tmp_path):
    from collections import Counter

    from p5x.split import time_split
    from p5x.training import cache_key, task_rows

    n_users = sum(len(xs) >= 2 for xs in time_split(toy_ds).train.values())
    cfg = _cfg("d", tmp_path, tasks="sequential,direct,rating", epochs=3, next_first=2, batch_size=4,
               kind_counts="sequential.next=3")
    rows = task_rows(toy_ds, cfg)[2]
    per_epoch = 3 * n_users  # the first two epochs: 3 next-item prompts per user, nothing else
    first, rest = rows.select(range(2 * per_epoch)), rows.select(range(2 * per_epoch, len(rows)))
    assert set(first["kind"]) == {"next"} and set(first["task"]) == {"sequential"}
    assert {"next", "candidates", "yesno", "rating"} <= set(rest["kind"]) and set(rest["task"]) == {
        "sequential", "direct", "rating"}
    assert Counter(rest["kind"])["next"] == per_epoch
    # epoch 2 is the same mixture as a run without the curriculum renders for its epoch 2
    plain = task_rows(toy_ds, _cfg("d", tmp_path, tasks="sequential,direct,rating", epochs=3, batch_size=4,
                                   kind_counts="sequential.next=3"))[2]
    assert rest["inputs"] == plain.select(range(len(plain) - len(rest), len(plain)))["inputs"]
    assert cache_key(cfg, toy_ds)["next_first"] == 2
    assert "next_first" not in cache_key(_cfg("d", tmp_path), toy_ds)
    for bad in (dict(next_first=2, epochs=1), dict(next_first=1, tasks="direct"),
                dict(next_first=1, kind_counts="sequential.next=0")):
        with pytest.raises(ConfigError, match="--next-first"):
            _cfg("d", tmp_path, **bad).validate()


def test_bucket_order_is_a_seeded_permutation_of_similar_length_batches():
    from p5x.training import bucket_order

    rng = np.random.default_rng(0)
    lengths = rng.choice([20, 400], size=1000)
    order = bucket_order(lengths, batch_size=8, seed=1, window=16)
    assert sorted(order.tolist()) == list(range(1000))
    assert np.array_equal(order, bucket_order(lengths, 8, 1, 16))
    assert not np.array_equal(order, bucket_order(lengths, 8, 2, 16))
    batches = order.reshape(-1, 8)  # 1000 = 125 full batches
    mixed = sum(len(set(lengths[b])) > 1 for b in batches)
    assert mixed <= 1000 // (8 * 16) + 1  # at most one mixed batch per window
    # padding saved: the padded size of bucketed batches is far below random batches
    padded = lambda o: sum(lengths[b].max() * len(b) for b in o.reshape(-1, 8))  # noqa: E731
    assert padded(order) < 0.7 * padded(rng.permutation(1000))


@pytest.mark.parametrize("batch_size,workers", [(0, 1), (4, 1), (4, 2)])
def test_render_epochs_rows_match_datasets_shuffle_and_select(toy_ds, batch_size, workers):
    """render_epochs reorders with Arrow `take`; the rows and their order are exactly those of the
    datasets pipeline it replaced (shuffle(seed + e) -> select(bucket_order) -> flatten_indices),
    so runs recorded before the change describe the same training data."""
    import datasets

    from p5x import tasks
    from p5x.training import bucket_order, render_epochs

    ctx = tasks.make_context(toy_ds, seed=3)
    fams = ["sequential", "direct"]
    got = render_epochs(ctx, fams, epochs=2, seed=3, batch_size=batch_size, workers=workers)
    parts = []
    for e in range(2):
        p = tasks.render(ctx, fams, "train", epoch=e).shuffle(seed=3 + e).flatten_indices()
        if batch_size:
            p = p.select(bucket_order([len(s) for s in p["inputs"]], batch_size, 3 + e))
        parts.append(p)
    want = datasets.concatenate_datasets(parts).flatten_indices()
    assert len(got) > 20 and got.features == want.features
    assert got.to_dict() == want.to_dict()


def test_tokenizer_corpus_keeps_row_order(toy_ds):
    """Batched reading gives the SentencePiece trainer the same texts in the same order (a changed
    order could change the learned vocabulary)."""
    from p5x import tasks
    from p5x.training import tokenizer_corpus

    rows = tasks.render(tasks.make_context(toy_ds, seed=0), ["sequential", "direct"], "train")
    want = [t for r in rows.to_list() for t in (r["inputs"], r["targets"])]
    assert len(want) > 20
    assert list(tokenizer_corpus(rows)) == want
    assert list(tokenizer_corpus(rows.to_list())) == want
    items = list(tokenizer_corpus(rows, toy_ds))[len(want):]
    assert items and all(isinstance(t, str) and t for t in items)


def test_dropout_flag_reaches_the_saved_model(toy_dir, tmp_path):
    """--dropout 0 trains a T5 without dropout and the checkpoint records it; bad values are refused."""
    cfg = parse_args(["--data", str(toy_dir), "--output", str(tmp_path / "d0"), "--dropout", "0",
                      "--max-steps", "2", "--batch-size", "8", "--use-cpu", "--vocab-size", "200",
                      "--max-source-len", "64", "--max-target-len", "16"])
    assert cfg.dropout == 0.0
    out = train(cfg, make_rows=make_rows)
    ck = load_checkpoint(out)
    assert ck.model.backbone.config.dropout_rate == 0.0
    assert json.loads((out / "p5x_config.json").read_text())["train_config"]["dropout"] == 0.0
    assert _cfg(toy_dir, tmp_path).validate().dropout == -1.0  # default: the backbone's own (0.1)
    for bad in (1.0, -0.5, 2.0):
        with pytest.raises(ConfigError, match="--dropout"):
            _cfg(toy_dir, tmp_path, dropout=bad).validate()


def _ul_reference(step_logits, prompt_items, answer):
    p = step_logits.softmax(-1)
    return -sum(torch.log1p(-p[h]) for h in set(prompt_items) - {answer})


def test_history_unlikelihood_matches_its_definition_in_both_layouts():
    """-sum log(1 - p(h)) over the prompt's item tokens other than the answer, at the answer's
    first token, averaged over rows whose answer is an item; the decoder-only layout (logits of the
    last positions, left-padded labels over the whole row) gives the same number."""
    from p5x.training import history_unlikelihood

    g = torch.Generator().manual_seed(0)
    v, items = 9, [4, 5, 6, 7, 8]
    mask = torch.zeros(v, dtype=torch.bool)
    mask[items] = True
    prompts = [[4, 2, 5, 4, 3], [4, 6, 3, 0, 0], [5, 7, 8, 3, 0]]  # 0 pad, 3 eos-like, 2 text; row 0 repeats 4
    answers = [6, 6, 1]  # row 1's answer is in its prompt (not a negative); row 2 answers text (skipped)
    step = torch.randn(3, v, generator=g, requires_grad=True)
    want = (_ul_reference(step[0], [4, 5, 4], 6) + _ul_reference(step[1], [4, 6], 6)) / 2
    logits = torch.cat([step[:, None], torch.randn(3, 1, v, generator=g)], 1)
    labels = torch.tensor([[a, 3] for a in answers])
    got = history_unlikelihood(logits, labels, torch.tensor(prompts), mask)
    assert torch.allclose(got, want)
    # the gradient too (a repeated history item pushed down once, not twice)
    assert torch.allclose(*(torch.autograd.grad(x, step, retain_graph=True)[0] for x in (got, want)))
    step = step.detach()
    # decoder-only: [pad.. prompt answer eos], labels -100 over the prompt; logits of the last 4 positions
    rows = [[0] * (5 - len([t for t in p if t])) + [t for t in p if t] + [a, 3] for p, a in zip(prompts, answers)]
    ids = torch.tensor(rows)
    full = torch.full_like(ids, -100)
    full[:, -2:] = ids[:, -2:]
    last = torch.randn(3, 4, v, generator=g)
    last[:, 1] = step  # position -3 (the prompt's last token) predicts the answer
    got = history_unlikelihood(last, full, ids, mask, decoder_only=True)
    assert torch.allclose(got, want)
    none = history_unlikelihood(logits.requires_grad_(), torch.tensor([[1, 3]] * 3), torch.tensor(prompts), mask)
    assert float(none) == 0.0 and none.requires_grad


def test_history_unlikelihood_trains_history_items_down(toy_dir, toy_ds, tmp_path, capsys):
    """Through train.py: with the term on, the trained model gives the prompt's own items less
    probability at the answer than the same run without it; its mean is logged; bad values fail."""
    from p5x.split import time_split
    from p5x.training import history_unlikelihood

    common = dict(tasks="sequential", index="atomic", item_init="markov", max_steps=60, save_steps=1000, logging_steps=10,
                  lr=3e-3, max_source_len=128, max_target_len=8, batch_size=16)
    mass = {}
    for w in (0.0, 5.0):
        out = train(_cfg(toy_dir, tmp_path / f"ul{w}", history_unlikelihood=w, **common))
        ck = load_checkpoint(out, data=toy_ds)
        hist = json.loads((out / "trainer_state.json").read_text())["log_history"]
        assert any("loss/history_unlikelihood" in h for h in hist) == bool(w)
        from p5x.iteminit import item_token_ids
        ids = item_token_ids(ck.tokenizer, ck.index)
        items = {ck.index.text(i): t for i, t in zip(ck.index.codes, ids)}
        seqs = {u: [x.item_id for x in h] for u, h in time_split(toy_ds).train.items() if len(h) >= 3}
        user = sorted(seqs)[:24]
        texts = [f"user {ck.user_index.text(u)} bought " + " , ".join(ck.index.text(i) for i in seqs[u][:-1])
                 + " . what next ?" for u in user]
        answers = [items[ck.index.text(seqs[u][-1])] for u in user]
        batch = ck.featurizer.encode_prompts(texts)
        labels = torch.tensor([[a, ck.tokenizer.eos_token_id] for a in answers])
        mask = torch.zeros(ck.model.backbone.get_output_embeddings().weight.shape[0], dtype=torch.bool)
        mask[ids] = True
        with torch.no_grad():
            logits = ck.model(**batch, labels=labels).logits
            mass[w] = float(history_unlikelihood(logits, labels, batch["input_ids"], mask))
    assert mass[5.0] < 0.5 * mass[0.0], mass
    assert main(["--history-unlikelihood", "1", "--index", "random"]) == 2
    assert "--history-unlikelihood: needs --index atomic" in capsys.readouterr().err
    assert main(["--history-unlikelihood", "-1", "--index", "atomic"]) == 2
    assert "must be >= 0" in capsys.readouterr().err


def test_family_losses_accumulate_each_familys_row_mean():
    """The per-family training loss (logged as loss/<family>) is the mean over the interval's rows of
    each row's mean answer-token loss (the model's row_loss), kept apart by family; rows of no known
    family count nowhere."""
    from p5x.tasks import FAMILIES
    from p5x.training import _make_trainer_class

    trainer = object.__new__(_make_trainer_class())
    g = torch.Generator().manual_seed(0)
    want = {}
    for _ in range(2):  # two steps in one logging interval
        row_loss = torch.rand(4, generator=g)
        tasks = torch.tensor([1, 2, 1, -1])
        trainer._family_losses(row_loss, tasks)
        for r in range(3):
            want.setdefault(FAMILIES[int(tasks[r])], []).append(float(row_loss[r]))
    sums, counts = (t.tolist() for t in trainer._loss_acc)
    got = {fam: s / c for fam, s, c in zip(FAMILIES, sums, counts) if c}
    assert got.keys() == want.keys() == {"sequential", "direct"}
    for fam, rows in want.items():
        assert got[fam] == pytest.approx(sum(rows) / len(rows), rel=1e-5)


def test_throughput_meter_steady_rate_leaves_out_start_up_and_the_final_save(monkeypatch):
    """Three slow first batches (a GPU's start-up) and a long save after the last batch: the overall
    rate counts them, the steady rate (what bench/beauty/oneshot.py plans with) does not."""
    from p5x import training as T

    clock = {"now": 0.0}
    monkeypatch.setattr(T.time, "perf_counter", lambda: clock["now"])
    meter = T.ThroughputMeter()
    batch = {"input_ids": torch.ones(4, 5, dtype=torch.long), "attention_mask": torch.ones(4, 5, dtype=torch.long),
             "labels": torch.ones(4, 2, dtype=torch.long)}
    for step in range(13):
        meter.add(batch, decoder_only=False)
        clock["now"] += 10.0 if step < T.ThroughputMeter.WARM_BATCHES else 1.0
    clock["now"] += 50.0  # the checkpoint and the loss plot after the last batch
    s = meter.summary(None)
    assert s["samples"] == 52 and s["seconds"] == pytest.approx(30 + 10 + 50)
    # batches 4..12 began one second apart, and each of the 9 gaps finished a batch of 4 samples
    assert s["steady_samples_per_s"] == pytest.approx(4.0)
    assert s["samples_per_s"] == pytest.approx(52 / 90, abs=0.01)
    short = T.ThroughputMeter()
    for _ in range(T.ThroughputMeter.WARM_BATCHES):
        short.add(batch, decoder_only=False)
    assert short.summary(None)["steady_samples_per_s"] is None  # too few batches to say


def test_label_smoothing_matches_torch_and_logs_the_plain_loss(toy_dir, tmp_path):
    """--label-smoothing e: the training loss is torch's label-smoothed cross-entropy over the answer
    tokens, the logged row_loss the plain one; evaluation (eval mode) never smooths."""
    import torch.nn.functional as F

    from p5x.modeling import _with_token_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 4, 11)
    labels = torch.tensor([[1, 2, -100, -100], [3, 4, 5, -100], [6, 7, 8, 9]])

    class Out(dict):
        pass

    got = _with_token_loss(Out(), logits, labels, rows=True, smoothing=0.2)
    want = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100, label_smoothing=0.2)
    assert torch.allclose(got.loss, want, atol=1e-6)
    plain = _with_token_loss(Out(), logits, labels, rows=True)
    assert torch.allclose(got["row_loss"], plain["row_loss"], atol=1e-6)
    assert not torch.allclose(got.loss, plain.loss)
    # wired through training: from the same start on the same first batch, the smoothed run's loss
    # differs and its logged family losses (plain cross-entropy) do not
    first = []
    for e in (0.0, 0.5):
        out = train(_cfg(toy_dir, tmp_path / f"ls{e}", tasks="sequential", label_smoothing=e, max_steps=1),
                    make_rows=make_rows)
        first.append(json.loads((out / "trainer_state.json").read_text())["log_history"][0])
    assert abs(first[0]["loss"] - first[1]["loss"]) > 1e-3
    assert first[0]["loss/sequential"] == pytest.approx(first[1]["loss/sequential"], abs=1e-5)
    with pytest.raises(ConfigError, match="--label-smoothing"):
        TrainConfig(label_smoothing=1.0).validate()
