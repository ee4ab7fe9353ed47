"""Smoke tests for the speed plumbing: pre-tokenized collation, the training cache, --time-limit
stages, throughput records, and the bench/ CLIs on toy data (tiny models, no timing asserts)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from p5x.features import Featurizer
from p5x.training import PaddingCollator, TrainConfig, encode_rows, pretokenize, train

sys.path.insert(0, str(Path(__file__).parent))
from p5x_rows import make_rows, rows_for  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _tokenizer(tmp_path, texts):
    from p5x.tokenization import train_sentencepiece

    return train_sentencepiece(texts, tmp_path / "tok", vocab_size=120)


@pytest.mark.parametrize("decoder_only", [False, True])
def test_padding_collator_matches_featurizer(toy_ds, tmp_path, decoder_only):
    import datasets

    rows, index, users = rows_for(toy_ds)
    rows = rows[:12]
    tok = _tokenizer(tmp_path, [t for r in rows for t in (r["inputs"], r["targets"])])
    feat = Featurizer(tok, decoder_only, whole_word=True, max_source_len=40, max_target_len=8)
    pre = pretokenize(datasets.Dataset.from_list(rows), feat)
    assert set(pre.column_names) == {"input_ids", "whole_word_ids", "labels", "task"}
    want, got = feat(rows), PaddingCollator(feat)(pre.to_list())
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    one = encode_rows(feat, {"inputs": [rows[0]["inputs"]], "targets": [rows[0]["targets"]]})
    assert one["labels"][0][-1] == tok.eos_token_id
    # under --content-prior the rows keep their kind and both collators flag the next-item prompts
    feat.mark_next_items = True
    rows = [{**r, "kind": "next" if r["inputs"].endswith("what next ?") else "yesno"} for r in rows]
    pre = pretokenize(datasets.Dataset.from_list(rows), feat)
    assert "kind" in pre.column_names
    want, got = feat(rows), PaddingCollator(feat)(pre.to_list())
    flags = [r["task"] == "sequential" and r["kind"] == "next" for r in rows]
    assert want["prior_rows"].tolist() == got["prior_rows"].tolist() == flags and any(flags) and not all(flags)


def _cfg(data, out, **kw):
    base = dict(data=str(data), output=str(out), epochs=1, batch_size=8, max_steps=4, save_steps=100,
                logging_steps=1, use_cpu=True, vocab_size=200, lr=3e-3, max_source_len=64, max_target_len=16,
                pretokenize=True)
    return TrainConfig(**{**base, **kw})


def _no_rows(ds, cfg):
    raise AssertionError("rows were rendered again although the cache was valid")


def test_cache_time_limit_and_resume(toy_dir, tmp_path):
    out = tmp_path / "run"
    train(_cfg(toy_dir, out, prepare_only=True), make_rows=make_rows)
    assert (out / "pretokenized" / "key.json").is_file() and not (out / "model.safetensors").exists()
    # a tiny time limit stops after the first step with a checkpoint; resuming finishes the run
    train(_cfg(toy_dir, out, time_limit=1e-6), make_rows=_no_rows)
    first = json.loads((out / "throughput.json").read_text())
    assert (out / "checkpoint-1").is_dir() and first["global_step"] == 1 and not first["done"]
    train(_cfg(toy_dir, out, resume=True), make_rows=_no_rows)
    tp = json.loads((out / "throughput.json").read_text())
    assert tp["done"] and tp["global_step"] == 4 and tp["samples"] == 3 * 8 and tp["pretokenized"]
    assert tp["padded_tokens"] >= tp["tokens"] > 0 and 0 <= tp["collate_share"] < 1
    assert tp["steady_steps_per_s"] is None  # three batches in this stage: too few past the start-up to say
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("throughput/tokens_per_s" in h for h in logs)
    # another option changes the key: the cache is rebuilt, not reused
    with pytest.raises(AssertionError, match="rendered again"):
        train(_cfg(toy_dir, tmp_path / "run", max_source_len=48, resume=True), make_rows=_no_rows)


def _run(args, timeout=300, env=None):
    if env is None:  # a start time left in this shell by device_setup.sh would count against oneshot's budget
        env = {k: v for k, v in os.environ.items() if k != "P5X_COMMAND_START"}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_train_throughput_cli(toy_dir, tmp_path):
    js, scratch = tmp_path / "tp.json", tmp_path / "scratch"
    scratch.mkdir()
    r = _run(["bench/train_throughput.py", "--data", str(toy_dir), "--model", "t5-tiny", "--batch-size", "4",
              "--steps", "2", "--warmup", "1", "--users", "10", "--vocab-size", "200", "--max-source-len", "96",
              "--device", "cpu", "--peak-flops", "1e12", "--json", str(js)],
             env={**os.environ, "TMPDIR": str(scratch)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list(scratch.glob("p5x-tput-*"))  # the SentencePiece scratch directory is removed
    res = json.loads(js.read_text())
    assert res["samples_per_s"] > 0 and res["tokens_per_s"] > 0 and 0 < res["mfu"] < 1
    assert res["params_per_token"]["encoder"] > 0 and 0 <= res["data_wait_share"] < 1
    bad = _run(["bench/train_throughput.py", "--data", str(toy_dir), "--steps", "0"])
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


@pytest.mark.parametrize("full", [False, True])
def test_train_throughput_decoder_only_both_loss_paths(toy_dir, tmp_path, full):
    js = tmp_path / "tp.json"
    r = _run(["bench/train_throughput.py", "--data", str(toy_dir), "--model", "llama-tiny", "--tasks", "sequential",
              "--batch-size", "4", "--steps", "2", "--warmup", "1", "--users", "10", "--vocab-size", "200",
              "--max-source-len", "96", "--device", "cpu", "--json", str(js)] + (["--full-vocab-loss"] if full else []))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(js.read_text())
    assert res["full_vocab_loss"] is full and res["samples_per_s"] > 0


def test_render_bench_cli(toy_dir):
    r = _run(["bench/render_bench.py", "--data", str(toy_dir), "--batch-size", "4"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "same rows in the same order: True" in r.stdout
    bad = _run(["bench/render_bench.py", "--data", str(toy_dir), "--tasks", "nonesuch"])
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


@pytest.mark.parametrize("item_len,arch", [(4, "t5"), (1, "t5"), (3, "llama")])
def test_decode_bench_cli(tmp_path, item_len, arch):
    js = tmp_path / "d.json"
    items = "50" if item_len > 1 else "30"  # one-token ids: at most item-vocab - 2 distinct items
    r = _run(["bench/decode_bench.py", "--items", items, "--item-len", str(item_len), "--users", "2",
              "--batch", "2", "--beams", "3", "--vocab", "120", "--item-vocab", "40", "--d-model", "32",
              "--layers", "1", "--repeats", "1", "--src-len", "8", "--arch", arch, "--json", str(js)])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(js.read_text())
    assert res["identical"] and res["valid_rate"]["trie"] == 1.0
    assert ("one_token" in res["ms_per_user"]) == (item_len == 1) and "own" in res["ms_per_user"]


def test_beauty_recipe_scripts_parse():
    """The recipe's stages are valid bash, and an unknown stage is refused with a usage line."""
    script = REPO / "bench" / "beauty" / "run_gpu.sh"
    for sh in ("run_gpu.sh", "carry.sh", "device_setup.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / "bench" / "beauty" / sh)]).returncode == 0, sh
    r = subprocess.run(["bash", str(script), "no-such-stage"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "usage" in r.stderr.lower()
    cfg = json.loads((REPO / "bench" / "beauty" / "config.json").read_text())
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(cfg["train"]) <= fields, set(cfg["train"]) - fields
    assert set(cfg["oneshot"]["train"]) <= fields, set(cfg["oneshot"]["train"]) - fields
    one = cfg["oneshot"]
    assert set(one.get("ablations", {})) <= set(cfg["ablations"]), "oneshot.ablations names an unknown ablation"
    for name, flags in cfg["ablations"].items():
        assert set(flags) <= fields, (name, set(flags) - fields)
        TrainConfig(**{**cfg["train"], **flags}).validate()  # e.g. a --kind-counts spelling mistake
        extra = one.get("ablations", {}).get(name, {})
        assert set(extra) <= fields, (name, set(extra) - fields)
        TrainConfig(**{**cfg["train"], **one["train"], **flags, **extra}).validate()  # as oneshot.py runs it
    TrainConfig(**{**cfg["train"], **one["train"]}).validate()


def test_pretokenized_run_evaluates_with_kept_templates(toy_dir, tmp_path, capsys):
    """A --pretokenize run on real task rows; evaluation keeps only the named templates and is timed."""
    from p5x.evaluate import main as evaluate_main

    out = train(_cfg(toy_dir, tmp_path / "ck", batch_size=16, max_steps=3, max_source_len=256, vocab_size=300))
    ev = tmp_path / "eval"
    rc = evaluate_main(["--checkpoint", str(out), "--tasks", "sequential", "--template-ids",
                        "sequential-1,sequential-13", "--max-users", "4", "--beams", "5", "--no-baselines",
                        "--out", str(ev), "--no-progress"])
    assert rc == 0
    res = json.loads((ev / "metrics.json").read_text())
    rows = res["rows"]
    assert {r["templates"] for r in rows} == {"seen", "unseen"}
    assert {t for r in rows for t in r["template_ids"]} == {"sequential-1", "sequential-13"}
    assert all(r["n"] == 4 and r["seconds"] > 0 and r["ms_per_row"] > 0 for r in rows)
    assert res["meta"]["model_eval_seconds"] > 0 and res["meta"]["model_warmup_seconds"] > 0
    assert evaluate_main(["--checkpoint", str(out), "--template-ids", "sequential-99", "--no-baselines",
                          "--out", str(ev), "--no-progress"]) == 2
    assert "sequential-99" in capsys.readouterr().err


def test_parallel_prepare_gives_the_same_rows(toy_dir, tmp_path, capsys):
    """Epochs rendered in forked workers and tokenized with num_proc equal the in-process result."""
    import datasets

    got = {}
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        train(_cfg(toy_dir, out, epochs=2, workers=w, prepare_only=True))
        got[w] = datasets.load_from_disk(str(out / "pretokenized" / "rows"))
        # the stage times a GPU run's log reports
        assert re.search(r"prepared \d+ rows: render [\d.]+ s, tokenizer [\d.]+ s, pre-tokenize \+ save [\d.]+ s",
                         capsys.readouterr().err)
    assert len(got[1]) == len(got[2]) > 0
    assert got[1]["input_ids"] == got[2]["input_ids"] and got[1]["labels"] == got[2]["labels"]


def test_cache_key_depends_on_the_few_shot_draw(toy_ds, tmp_path):
    from p5x.training import cache_key

    base = cache_key(_cfg("d", tmp_path, tasks="preference", shots=16), toy_ds)
    assert base == cache_key(_cfg("d", tmp_path, tasks="preference", shots=16), toy_ds)
    for change in ({"shots": 64}, {"holdout_users": 10}, {"holdout_seed": 1}, {"seed": 1}):
        kw = {"tasks": "preference", "shots": 16, **change}
        assert cache_key(_cfg("d", tmp_path, **kw), toy_ds) != base, change


def _oneshot():
    sys.path.insert(0, str(REPO / "bench" / "beauty"))
    import oneshot

    return oneshot


def test_oneshot_plan_splits_the_time_left():
    plan = _oneshot().plan
    cal = {"train_s": 30.0, "train_wall_s": 50.0, "steps_per_s": 10.0, "eval_users": 100,
           "eval_model_s": 1.0, "eval_wall_s": 11.0}  # 10 ms per user and prompt, 10 s to load
    p = p_full = plan(500.0, cal, users=1000, prompts=2, margin=20.0, min_train=60.0)
    assert p["eval_users"] == 1000 and p["eval_need_s"] == pytest.approx(1.15 * (2 * 10 + 20))
    assert p["train_s"] == pytest.approx(500 - 46 - 20 - 20, abs=0.1) and p["extra_steps"] == int(10 * p["train_s"])
    # too little time for every user: train the minimum, score the first users that fit
    p = plan(150.0, cal, users=100_000, prompts=2, margin=20.0, min_train=60.0)
    assert p["train_s"] == 60.0 and 0 < p["eval_users"] < 100_000
    spent = lambda users: 60 + 20 + 20 + 1.15 * 2 * (10 + 0.01 * users)  # noqa: E731
    assert spent(p["eval_users"]) <= 150.0 < spent(p["eval_users"] + 1)
    # a step cap (max_passes over the prepared rows) counts the calibration's steps too
    cal["steps"] = 300
    assert plan(500.0, cal, users=1000, prompts=2, margin=20.0, min_train=60.0, max_steps=1000)["extra_steps"] == 700
    assert plan(500.0, cal, users=1000, prompts=2, margin=20.0, min_train=60.0, max_steps=200)["extra_steps"] == 0
    # the diversity check's scoring process is planned in: 10 s to start + 500 users at 10 ms
    d = plan(500.0, cal, users=1000, prompts=2, margin=20.0, min_train=60.0, diversity_users=500)
    assert d["diversity_s"] == pytest.approx(15.0) and d["eval_need_s"] == pytest.approx(1.15 * (40 + 15), abs=0.1)
    assert d["train_s"] == pytest.approx(p_full["train_s"] - 1.15 * 15, abs=0.1)
    # short of time, the check is dropped before any test user is cut
    d = plan(150.0, cal, users=100_000, prompts=2, margin=20.0, min_train=60.0, diversity_users=500)
    assert d["diversity_s"] == 0.0 and d["eval_users"] == p["eval_users"]
    # the calibration stage's item-row fit is not start-up the resumed training stage pays again
    fit = plan(500.0, {**cal, "train_wall_s": 65.0, "item_init_s": 15.0}, users=1000, prompts=2, margin=20.0,
               min_train=60.0)
    assert fit["train_fixed_s"] == 20.0 and fit["train_s"] == pytest.approx(p_full["train_s"], abs=0.1)


def test_oneshot_rejects_a_bad_max_passes(tmp_path):
    path = _oneshot_config(tmp_path)
    cfg = json.loads(path.read_text())
    cfg["oneshot"]["max_passes"] = 0
    path.write_text(json.dumps(cfg))
    r = _run(["bench/beauty/oneshot.py", "--config", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and r.stderr.startswith("error:") and "max_passes" in r.stderr
    assert not (tmp_path / "o").exists()
    cfg["oneshot"].update(max_passes=1, exclude_history_templates="sequential-2")  # not an evaluated prompt
    path.write_text(json.dumps(cfg))
    r = _run(["bench/beauty/oneshot.py", "--config", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "exclude_history_templates" in r.stderr and not (tmp_path / "o").exists()
    cfg["evaluate"]["template_ids"] = "sequential-1,sequential-13,sequential-2"  # 4 metrics files: too many
    cfg["oneshot"]["exclude_history_templates"] = "sequential-1"
    path.write_text(json.dumps(cfg))
    r = _run(["bench/beauty/oneshot.py", "--config", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "metrics files" in r.stderr and not (tmp_path / "o").exists()


def _oneshot_config(tmp_path) -> Path:
    cfg = {"train": {"tasks": "sequential", "model": "t5-tiny", "epochs": 3, "batch_size": 8, "lr": 0.003,
                     "warmup_steps": 2, "vocab_size": 200, "max_source_len": 96, "max_target_len": 16,
                     "save_steps": 1000, "logging_steps": 2, "use_cpu": True},
           "evaluate": {"tasks": "sequential", "templates": "seen,unseen", "template_ids": "sequential-1,sequential-13",
                        "beams": 5, "batch_size": 8, "device": "cpu", "by_history": True},
           # one pass at most: on an idle machine the run ends when the toy epoch does (~80 s), and the
           # large budget leaves room for every stage on a loaded one
           "oneshot": {"budget_s": 300, "calibrate_train_s": 2, "calibrate_users": 8, "margin_s": 5,
                       "min_train_s": 3, "max_passes": 1, "exclude_history_templates": "sequential-1"}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.slow
def test_oneshot_runs_every_stage_inside_its_budget(toy_dir, tmp_path):
    out = tmp_path / "out"
    # as on the device: device_setup.sh exported the command's start, 7 s before the driver began
    env = {**os.environ, "P5X_COMMAND_START": str(time.time() - 7)}
    r = _run(["bench/beauty/oneshot.py", "--config", str(_oneshot_config(tmp_path)), "--data", str(toy_dir),
              "--run", str(tmp_path / "run"), "--out", str(out)], timeout=400, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert 7 <= s["before_driver_s"] < 60 and s["elapsed_s"] >= s["before_driver_s"]  # inside the budget
    assert s["status"] == "done" and set(s["stages_s"]) == {"prepare", "calibrate_train", "calibrate_eval", "train",
                                                            "evaluate_sequential-1", "evaluate_sequential-13",
                                                            "evaluate_sequential-1_history_excluded", "diversity"}
    assert s["diversity"]["users"] == s["test_users"] and s["diversity"]["distinct_top1"] >= 1
    # the planned steps all ran, or (a machine slower than its calibration) the time limit ended them and said so
    assert s["calibration"]["steps"] < s["train"]["global_step"] <= s["train"]["max_steps"]
    cal = s["calibration"]  # planned at the steady rate; the warm-up batch is timed apart from the scoring
    assert cal["steps_per_s"] > 0 and cal["overall_steps_per_s"] > 0 and cal["eval_warmup_s"] > 0
    if s["train"]["global_step"] < s["train"]["max_steps"]:
        assert "reached at step" in (out / "oneshot.log").read_text()
    assert s["train"]["rows"] > 0 and 0 < s["train"]["passes"] <= 1.0  # oneshot.max_passes 1
    assert {r["templates"] for r in s["results"]} == {"seen", "unseen"}
    whole = [r for r in s["results"] if ", users with " not in r["protocol"]]
    assert sorted(r["protocol"] for r in whole) == ["full ranking", "full ranking", "full ranking (history excluded)"]
    groups = [r for r in s["results"] if ", users with " in r["protocol"]]  # config.json's evaluate asks for them
    assert groups and sum(r["n"] for r in groups) == sum(r["n"] for r in whole)
    listed = (out / "summary.md").read_text().split("ms per user and prompt: ")[1].split(")")[0]
    assert [x.rsplit(" ", 1)[0] for x in listed.split(", ")] == \
        ["sequential-1", "sequential-13", "sequential-1 history excluded"], listed  # one entry a prompt, no group rows
    assert s["eval_users"] == s["test_users"] > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["summary.json", "summary.md", "metrics_sequential-1.json", "metrics_sequential-13.json",
         "metrics_sequential-1_history_excluded.json", "throughput.json", "log_history.json", "oneshot.log"])  # what comes back from the GPU machine: at most 8 files


def test_oneshot_failing_stage_leaves_a_summary(tmp_path):
    out = tmp_path / "out"
    r = _run(["bench/beauty/oneshot.py", "--config", str(_oneshot_config(tmp_path)), "--data",
              str(tmp_path / "missing"), "--run", str(tmp_path / "run"), "--out", str(out)])
    assert r.returncode == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "failed" and "stage prepare exited 2" in s["error"]
    assert "missing" in (out / "oneshot.log").read_text()


def test_device_setup_without_wheels_says_what_to_run(tmp_path):
    import shutil

    d = tmp_path / "bench" / "beauty"
    d.mkdir(parents=True)
    shutil.copy(REPO / "bench" / "beauty" / "device_setup.sh", d)
    r = subprocess.run(["bash", str(d / "device_setup.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "carry.sh" in r.stderr


def test_oneshot_budget_counts_from_the_command_start(tmp_path):
    since = _oneshot().command_seconds_so_far
    assert since(None) == 0.0 and since("") == 0.0
    assert since("1000.5", now=1030.5) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="P5X_COMMAND_START.*epoch seconds"):
        since("yesterday")
    with pytest.raises(ValueError, match="in the future"):
        since("2000", now=1000)
    # a start long past leaves no budget: refused before anything is written
    out = tmp_path / "out"
    env = {**os.environ, "P5X_COMMAND_START": str(time.time() - 10_000)}
    r = _run(["bench/beauty/oneshot.py", "--config", str(_oneshot_config(tmp_path)), "--data", str(tmp_path),
              "--run", str(tmp_path / "run"), "--out", str(out)], env=env)
    assert r.returncode == 2 and "P5X_COMMAND_START" in r.stderr and "started 10000 s ago" in r.stderr
    assert not out.exists() and not (tmp_path / "run").exists()
    env["P5X_COMMAND_START"] = "soon"
    r = _run(["bench/beauty/oneshot.py", "--config", str(_oneshot_config(tmp_path)), "--out", str(out)], env=env)
    assert r.returncode == 2 and "'soon'" in r.stderr and not out.exists()


def test_device_setup_names_a_missing_wheel(tmp_path):
    import shutil

    d = tmp_path / "bench" / "beauty"
    d.mkdir(parents=True)
    shutil.copy(REPO / "bench" / "beauty" / "device_setup.sh", d)
    (tmp_path / ".whl").mkdir()
    for name in ("datasets-5.2.0", "dill-0.4.0", "multiprocess-0.70.18", "pyarrow-24.0.0"):  # no fsspec
        (tmp_path / ".whl" / f"{name}-py3-none-any.whl").write_bytes(b"")
    r = subprocess.run(["bash", str(d / "device_setup.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "no fsspec wheel" in r.stderr and "carry.sh" in r.stderr


def test_oneshot_ablation_goes_over_the_train_flags(tmp_path):
    load = _oneshot().load_sections
    cfg = json.loads((REPO / "bench" / "beauty" / "config.json").read_text())
    train, evaluate, one = load(REPO / "bench" / "beauty" / "config.json", "no_whole_word")
    assert train["whole_word_embeddings"] == "off" and train["epochs"] == cfg["oneshot"]["train"]["epochs"]
    assert "time_limit" not in train and "max_users" not in evaluate
    # the content prior's row (one-token ids only): the main run has it, an ablation without atomic ids not
    assert load(REPO / "bench" / "beauty" / "config.json")[1]["content_prior"] == 6
    assert "content_prior" not in load(REPO / "bench" / "beauty" / "config.json", "index_random")[1]
    trained = load(REPO / "bench" / "beauty" / "config.json", "content_prior_trained")  # the prior in the loss too
    assert trained[0]["content_prior"] == 6 and trained[1]["content_prior"] == 6
    main = load(REPO / "bench" / "beauty" / "config.json")[0]
    assert main["whole_word_embeddings"] == "on"
    # the one-command run trains next-item prompts alone (RESULTS session 15); the curriculum it replaced
    # (a next-item epoch, then the sequential + direct mixture) is an ablation
    assert (main["tasks"], main["epochs"], main["next_first"]) == ("sequential", 2, 0)
    assert main["kind_counts"] == "sequential.next=20,sequential.candidates=0,sequential.yesno=0"
    cur = load(REPO / "bench" / "beauty" / "config.json", "curriculum")[0]
    assert (cur["tasks"], cur["next_first"], cur["kind_counts"]) == ("sequential,direct", 1, "sequential.next=20")
    # atomic ids whose embeddings start from a next-item fit on the training histories; item_init_cooc
    # is the co-occurrence start it replaced, index_atomic the random-init control
    assert (main["index"], main["item_init"], main["output_layer"]) == ("atomic", "markov-untied", "untied")
    # since session 24 with an unlikelihood term on the prompt's own items; history_unlikelihood_0 drops it
    assert main["history_unlikelihood"] == 5.0
    assert load(REPO / "bench" / "beauty" / "config.json", "history_unlikelihood_0")[0]["history_unlikelihood"] == 0
    tied = load(REPO / "bench" / "beauty" / "config.json", "item_init_markov")[0]  # sessions 15-22's start
    assert (tied["item_init"], tied["output_layer"]) == ("markov", "tied")
    ctl = load(REPO / "bench" / "beauty" / "config.json", "index_atomic")[0]
    assert (ctl["index"], ctl["item_init"]) == ("atomic", "random")
    assert load(REPO / "bench" / "beauty" / "config.json", "item_init_cooc")[0]["item_init"] == "cooc"
    # P5's mixture (both families, P5's counts, no curriculum) over one rendered epoch
    mix = load(REPO / "bench" / "beauty" / "config.json", "p5_mixture")[0]
    assert (mix["tasks"], mix["epochs"], mix["next_first"], mix["kind_counts"]) == ("sequential,direct", 1, 0, "")
    staged = cfg["train"]  # the staged recipe's main run: p5_mixture changes nothing there but the flags it names
    assert {**staged, **cfg["ablations"]["p5_mixture"]}["tasks"] == staged["tasks"] == "sequential,direct"
    # an ablation equal to the main run would spend a lease on the same run again: refused
    for same in ("next_only", "item_init_markov_untied", "sequential_only"):
        with pytest.raises(KeyError, match="equals the main run"):
            load(REPO / "bench" / "beauty" / "config.json", same)
    # next_only is still a real ablation of the staged recipe (its main run trains both families)
    assert {**staged, **cfg["ablations"]["next_only"]} != staged
    with pytest.raises(KeyError, match="no_such"):
        load(REPO / "bench" / "beauty" / "config.json", "no_such")
