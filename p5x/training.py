"""Training: parse options, assemble data, tokenizer and model, and run HF Trainer.

Each epoch's training prompts are rendered by p5x.tasks.render(ctx, families, "train", epoch=e), so
templates, negatives and candidate lists are re-drawn every epoch. All epochs are rendered up front,
each shuffled with seed + epoch, and concatenated; the Trainer then walks them IN ORDER (sequential
sampler, one Trainer "epoch"). That makes --resume exact: the Trainer restores weights, optimizer,
scheduler and RNG states and skips the batches already seen, and the data order depends on nothing
else. DeepSpeed (ZeRO-1/2) comes in through TrainingArguments(deepspeed=...), nothing home-made.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, P5XError
from .features import word_numbering_problem
from .indexing import METHODS
from .modeling import BACKBONES, answer_aligned
from .tasks import EXTRA_FAMILIES, FAMILIES, TRAIN_COUNTS, parse_kind_counts

_COUNTS_HELP = "; ".join(f"{f}: " + ", ".join(f"{k} {n}" for k, n in c.items()) for f, c in TRAIN_COUNTS.items())


def default_data() -> Path:
    try:
        from .paths import SAMPLE_DATA
        return Path(SAMPLE_DATA)
    except ImportError:  # older checkouts without p5x.paths
        return Path(__file__).resolve().parent / "sample_data" / "gift_cards"


@dataclass
class TrainConfig:
    """Options of one training run (each field is one train.py flag)."""

    data: str = field(default_factory=lambda: str(default_data()), metadata={"help": "normalized dataset directory"})
    tasks: str = field(default="all", metadata={"help": "'all' or a comma list of " + ", ".join(FAMILIES + EXTRA_FAMILIES)})
    model: str = field(default="t5-tiny", metadata={"help": "backbone name (" + ", ".join(BACKBONES) + ") or a local HF checkpoint dir"})
    output: str = field(default="runs/default", metadata={"help": "output / checkpoint directory"})
    epochs: int = field(default=1, metadata={"help": "epochs (each renders fresh training prompts)"})
    batch_size: int = field(default=32, metadata={"help": "per-device batch size"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (linear decay)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (every weight but biases and norms, item rows too, unless --table-weight-decay sets the tables apart); on Beauty 0.3 beat 0.01 on three t5-tiny seeds, and 0.5 to 1.0 fell off at 64 and 128 wide (bench/RESULTS.md, sessions 32-33)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing e of the training loss: "
                                                         "(1 - e) x the answer tokens' cross-entropy + e x the "
                                                         "mean -log p over the vocabulary (0: off); the logged "
                                                         "family losses stay the plain cross-entropy"})
    table_weight_decay: float = field(default=-1.0, metadata={"help": "AdamW weight decay of the token tables "
                                                               "alone (the input embeddings and an untied output "
                                                               "layer, which hold the item rows with --index atomic), "
                                                               "the rest of the model keeping --weight-decay; -1: "
                                                               "--weight-decay for the tables too; not with --deepspeed. On "
                                                               "Beauty neither half decayed alone gained what both "
                                                               "at 0.3 did (bench/RESULTS.md, session 34)"})
    seed: int = field(default=0, metadata={"help": "seed for init, indexing, rendering and data order"})
    index: str = field(default="random", metadata={"help": "item indexing: random, sequential, collaborative or atomic (one token per item)"})
    item_init: str = field(default="random", metadata={"help": "item-token embeddings at the start: random (the "
                                                   "backbone's init), cooc (top eigenvectors of the training histories' item "
                                                   "co-occurrence), markov (rows of a factorised next-item model "
                                                   "fitted to the training histories, tied: an item scores high "
                                                   "after itself) or markov-untied (the same model with a source "
                                                   "row per item in the input table and a target row in the output "
                                                   "layer; needs --output-layer untied); p5x.iteminit; all need "
                                                   "--index atomic"})
    item_init_cache: str = field(default="", metadata={"help": "folder where --item-init keeps its fitted rows, "
                                                    "keyed on the training histories, item order, seed, width "
                                                    "and device, so a second run on the same data skips the "
                                                    "fit (minutes on a CPU); empty: $P5X_CACHE_DIR, else "
                                                    "~/.cache/p5x; off: fit every time"})
    item_warmup_steps: int = field(default=0, metadata={"help": "with --index atomic: scale every update of the "
                                                        "item-token rows by step/N over the first N steps (0: "
                                                        "off) while the rest of the model trains as usual; on "
                                                        "Beauty it did not help a --item-init start "
                                                        "(bench/RESULTS.md, session 16)"})
    dropout: float = field(default=-1.0, metadata={"help": "dropout probability of the backbone (T5: every dropout "
                                                  "layer; LLaMA: attention dropout); -1 keeps the backbone's own "
                                                  "(0.1 for the T5 shapes, 0 for LLaMA); on Beauty with "
                                                  "t5-tiny, 0 lost the unseen prompt and 0.3 underfit "
                                                  "(bench/RESULTS.md, session 18)"})
    output_layer: str = field(default="", metadata={"help": "tied (the output layer scores the vocabulary with the "
                                                   "input embedding table) or untied (a table of its own); empty "
                                                   "keeps the backbone's own (tied for the T5 shapes, untied for "
                                                   "llama-tiny); backbones built from a config only. --item-init "
                                                   "markov-untied needs untied"})
    history_unlikelihood: float = field(default=0.0, metadata={"help": "with --index atomic: add N times the "
                                                               "unlikelihood -log(1 - p) of every item of the prompt "
                                                               "other than the answer, at the answer's (item) token, "
                                                               "so that an item of the history is not predicted as "
                                                               "its own next item (0: off; p5x.training."
                                                               "history_unlikelihood)"})
    content_prior: float = field(default=0.0, metadata={"help": "with --index atomic on a T5: train with W times "
                                                        "p5x.content's prior (the TF-IDF similarity of each item's "
                                                        "title, brand and categories to the history's last items) "
                                                        "added to the answer step's item logits of every next-item "
                                                        "prompt, so the model learns what the prior leaves; the "
                                                        "checkpoint records W and p5x.evaluate and generate.py rank "
                                                        "with it by default (0: off; 6 on Beauty, bench/RESULTS.md "
                                                        "session 36)"})
    content_items: int = field(default=3, metadata={"help": "--content-prior: the history items it reads, newest first"})
    content_decay: float = field(default=0.5, metadata={"help": "--content-prior: the weight of the j-th newest "
                                                        "history item is decay ** j"})
    history_dropout: float = field(default=0.0, metadata={"help": "the sequential family's training prompts only: "
                                                          "leave each item of the history the prompt shows, but the "
                                                          "most recent, out with this probability, drawn afresh each "
                                                          "epoch (an augmentation; 0: off; p5x.tasks.drop_history)"})
    cut_weighting: str = field(default="user", metadata={"help": "the sequential family's training cuts: user "
                                                         "(every user its --kind-counts prompts, cut uniformly) or "
                                                         "position (the same total, each user's share in proportion "
                                                         "to its cuts, so every cut of every training sequence is "
                                                         "equally likely, as SASRec trains; long histories get more "
                                                         "prompts)"})
    kind_counts: str = field(default="", metadata={"help": "training prompts per user and epoch of a kind, over "
                                                   "P5's counts (" + _COUNTS_HELP + "): family.kind=N,..., e.g. "
                                                   "sequential.next=15; 0 drops a kind"})
    next_first: int = field(default=0, metadata={"help": "curriculum: the first N epochs train on next-item prompts "
                                                 "only (the sequential family's next kind, at its --kind-counts "
                                                 "count), later epochs on the whole mixture"})
    whole_word_embeddings: str = field(default="on", metadata={"help": "add whole-word embeddings: on or off"})
    word_numbering: str = field(default="p5", metadata={"help": "whole-word ids: p5 (words numbered from the "
                                                        "prompt's start) or recency (an item in a list numbered by "
                                                        "how many items follow it, so the last history item has one "
                                                        "id in every wording; p5x.features)"})
    peft: str = field(default="none", metadata={"help": "parameter-efficient tuning: none or lora"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_targets: str = field(default="", metadata={"help": "comma list of LoRA target modules (default q,v projections)"})
    merge: bool = field(default=False, metadata={"help": "with --peft lora: also write the adapter merged into the "
                                                 "base as a full checkpoint in OUTPUT/merged"})
    shots: int = field(default=0, metadata={"help": "few-shot: train on N preference examples drawn (seeded) from "
                                            "training interactions, see p5x.fewshot (0: the usual mixture)"})
    holdout_users: int = field(default=0, metadata={"help": "with --shots: keep N seeded evaluation users out of "
                                                    "training entirely (p5x.fewshot.holdout_users)"})
    holdout_seed: int = field(default=0, metadata={"help": "seed of the --holdout-users draw (fixed across runs)"})
    max_source_len: int = field(default=512, metadata={"help": "max prompt tokens (100 candidate ids need ~450)"})
    max_target_len: int = field(default=64, metadata={"help": "max target tokens (eos included)"})
    max_words: int = field(default=512, metadata={"help": "whole-word embedding table size (indices clipped)"})
    vocab_size: int = field(default=8000, metadata={"help": "SentencePiece text vocabulary size when the backbone brings no tokenizer (the id pieces come on top)"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: all epochs)"})
    save_steps: int = field(default=500, metadata={"help": "write a resumable checkpoint every N steps"})
    logging_steps: int = field(default=10, metadata={"help": "log losses every N steps"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in --output"})
    pretokenize: bool = field(default=False, metadata={"help": "tokenize every row once and cache it in OUTPUT/pretokenized (reused by --resume); the collator then only pads"})
    prepare_only: bool = field(default=False, metadata={"help": "render, train the tokenizer and write the --pretokenize cache, then stop"})
    workers: int = field(default=1, metadata={"help": "processes for rendering epochs and pre-tokenizing"})
    time_limit: float = field(default=0.0, metadata={"help": "stop after this many seconds of training with a resumable checkpoint (0: no limit); --resume goes on"})
    deepspeed: str = field(default="", metadata={"help": "DeepSpeed JSON config (launch with the deepspeed launcher)"})
    use_cpu: bool = field(default=False, metadata={"help": "train on CPU even when CUDA is present"})
    bf16: str = field(default="auto", metadata={"help": "bf16 mixed precision: auto (on CUDA only), on (also on a "
                                                "CPU with bf16 units: autocast, fp32 master weights; a CPU without them "
                                                "emulates bf16, far slower) or off"})
    local_rank: int = field(default=-1, metadata={"help": "set by the distributed launcher"})

    def families(self) -> list[str]:
        if self.tasks == "all":
            return list(FAMILIES)
        names = [t.strip() for t in self.tasks.split(",") if t.strip()]
        from .errors import close_matches
        known = FAMILIES + EXTRA_FAMILIES
        for n in names:
            if n not in known:
                raise ConfigError(f"--tasks: unknown family {n!r}{close_matches(n, known)}")
        if not names:
            raise ConfigError("--tasks: no family given")
        return names

    def validate(self) -> "TrainConfig":
        from .iteminit import METHODS as ITEM_INITS
        from .modeling import OUTPUT_LAYERS

        for name, allowed in (("index", METHODS), ("item_init", ITEM_INITS),
                              ("whole_word_embeddings", ("on", "off")), ("peft", ("none", "lora")),
                              ("bf16", ("auto", "on", "off"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')}: expected one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        if self.output_layer and self.output_layer not in OUTPUT_LAYERS:
            raise ConfigError(f"--output-layer: expected one of {', '.join(OUTPUT_LAYERS)} (or empty: the "
                              f"backbone's own), got {self.output_layer!r}")
        problem = word_numbering_problem(self.word_numbering, self.max_words)
        if problem:
            raise ConfigError(f"--word-numbering: {problem}")
        if self.word_numbering != "p5" and self.whole_word_embeddings == "off":
            raise ConfigError(f"--word-numbering {self.word_numbering}: needs --whole-word-embeddings on")
        if self.prepare_only:
            self.pretokenize = True
        for name in ("epochs", "batch_size", "grad_accum", "max_source_len", "max_target_len", "max_words",
                     "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.lr <= 0:
            raise ConfigError("--lr: must be positive")
        if not 0 <= self.history_dropout < 1:
            raise ConfigError(f"--history-dropout: expected a probability in [0, 1), got {self.history_dropout}")
        if self.history_dropout and self.shots:
            raise ConfigError("--history-dropout: not used with --shots (few-shot rows are drawn as they are)")
        if self.cut_weighting not in ("user", "position"):
            raise ConfigError(f"--cut-weighting: expected user or position, got {self.cut_weighting!r}")
        if self.cut_weighting != "user" and self.shots:
            raise ConfigError("--cut-weighting: not used with --shots")
        shaping = (("--history-dropout", self.history_dropout), ("--cut-weighting", self.cut_weighting != "user"))
        for flag, on in shaping:
            if on and self.tasks != "all" and "sequential" not in self.families():
                raise ConfigError(f"{flag}: shapes the sequential family's training prompts; --tasks has no sequential")
        if self.shots < 0 or self.holdout_users < 0:
            raise ConfigError("--shots and --holdout-users: must be >= 0")
        if self.holdout_users and not self.shots:
            raise ConfigError("--holdout-users: only meaningful with --shots")
        if self.shots and self.families() != ["preference"]:
            raise ConfigError("--shots: few-shot sampling is defined for --tasks preference only")
        counts = parse_kind_counts(self.kind_counts)  # P5's counts when unset; a bad entry raises here
        if self.kind_counts:
            if self.shots:
                raise ConfigError("--kind-counts: not used with --shots (few-shot draws exactly N preference rows)")
        if self.next_first:
            if not 0 < self.next_first <= self.epochs:
                raise ConfigError(f"--next-first: expected 0..--epochs ({self.epochs}), got {self.next_first}")
            if self.tasks != "all" and "sequential" not in self.families():
                raise ConfigError("--next-first: needs the sequential family in --tasks (its next-item prompts)")
            if self.shots:
                raise ConfigError("--next-first: not used with --shots")
            if counts["sequential"]["next"] == 0:
                raise ConfigError("--next-first: --kind-counts sets sequential.next=0, so there is nothing to train first")
        if self.item_init != "random":
            if self.index != "atomic":
                raise ConfigError(f"--item-init {self.item_init}: needs --index atomic (one token per item), "
                                  f"got {self.index}")
            if self.shots:
                raise ConfigError(f"--item-init {self.item_init}: not used with --shots (held-out users would shape "
                                  "the embeddings)")
        from .modeling import BACKBONES

        spec = BACKBONES.get(self.model)  # None: a local checkpoint directory (pretrained)
        if self.output_layer and (spec is None or spec.pretrained is not None):
            raise ConfigError(f"--output-layer {self.output_layer}: only for backbones built from a config "
                              f"({self.model} is pretrained and keeps its own output layer)")
        own = "tied" if spec is None or spec.config.get("tie_word_embeddings", True) else "untied"
        if self.item_init == "markov-untied" and (self.output_layer or own) == "tied":
            raise ConfigError("--item-init markov-untied: needs --output-layer untied (its target rows go into an "
                              "output layer of their own)")
        if self.item_warmup_steps:
            if self.item_warmup_steps < 0:
                raise ConfigError("--item-warmup-steps: must be >= 0")
            if self.index != "atomic":
                raise ConfigError(f"--item-warmup-steps: needs --index atomic (one row per item), got {self.index}")
            if self.deepspeed:
                raise ConfigError("--item-warmup-steps: not with --deepspeed (its optimizer keeps its own fp32 copy "
                                  "of the weights, which the scaled rows would not reach)")
            if self.peft != "none":
                raise ConfigError("--item-warmup-steps: not with --peft lora (the embedding rows are frozen there)")
        if self.history_unlikelihood:
            if self.history_unlikelihood < 0:
                raise ConfigError(f"--history-unlikelihood: must be >= 0, got {self.history_unlikelihood}")
            if self.index != "atomic":
                raise ConfigError(f"--history-unlikelihood: needs --index atomic (one token per item), got {self.index}")
        if self.content_prior:
            from .content import check_prior_settings
            check_prior_settings(self.content_prior, self.content_items, self.content_decay)
            if self.index != "atomic":
                raise ConfigError(f"--content-prior: needs --index atomic (one token per item), got {self.index}")
            if self.tasks != "all" and "sequential" not in self.families():
                raise ConfigError(f"--content-prior: acts on next-item prompts; --tasks {self.tasks} has no sequential")
        if self.dropout != -1.0 and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout: expected a probability in [0, 1) or -1 (the backbone's own), got {self.dropout}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing: expected a value in [0, 1), got {self.label_smoothing}")
        if self.table_weight_decay != -1.0:
            if self.table_weight_decay < 0:
                raise ConfigError(f"--table-weight-decay: must be >= 0 (or -1: --weight-decay), got {self.table_weight_decay}")
            if self.deepspeed:
                raise ConfigError("--table-weight-decay: not with --deepspeed (its config builds the optimizer with one "
                                  "weight decay for every weight)")
        if self.merge and self.peft != "lora":
            raise ConfigError("--merge: needs --peft lora (there is no adapter to merge)")
        self.families()
        return self


def parse_args(argv=None) -> TrainConfig:
    """argparse over TrainConfig's fields; unknown flags are errors."""
    p = argparse.ArgumentParser(prog="train.py", description="Train a p5x model (defaults: a small T5 on "
                                "the bundled gift_cards sample, to runs/default).")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default_factory is field().default_factory else f.default_factory()
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            names = [flag, "--local_rank"] if f.name == "local_rank" else [flag]
            p.add_argument(*names, dest=f.name, type=typ, default=default,
                           help=f"{f.metadata['help']} (default: {default})")
    return TrainConfig(**vars(p.parse_args(argv))).validate()


# -- data ---------------------------------------------------------------------------------------

_RENDER_JOB: tuple = ()  # (ctx, families, seed, next_first) inherited by forked render workers


def _render_one(e: int):
    """Epoch e's rows as a pyarrow table, shuffled as Dataset.shuffle(seed=seed + e) orders them.

    The permutation is the one datasets draws (numpy's default_rng(seed + e)), applied with one
    Arrow `take` instead of datasets' flatten_indices, which re-encodes every row in Python
    (~55 s per 450k rows on one CPU core; take and length bucketing: ~4 s per 780k).
    """
    from . import tasks

    ctx, families, seed, next_first = _RENDER_JOB
    if e < next_first:  # curriculum: the sequential family's next-item prompts alone
        ctx, families = next_only(ctx), ["sequential"]
    table = tasks.render(ctx, families, "train", epoch=e).data.table  # in-memory, no indices mapping
    return table.take(np.random.default_rng(seed + e).permutation(len(table)))


def next_only(ctx):
    """A view of ctx whose training counts keep only the sequential family's `next` kind."""
    from dataclasses import replace

    return replace(ctx, train_counts={"sequential": {"next": ctx.train_counts["sequential"]["next"]}})


def render_epochs(ctx, families, epochs: int, seed: int, batch_size: int = 0, workers: int = 1,
                  next_first: int = 0):
    """Every epoch's training rows, each shuffled with seed + epoch, concatenated in epoch order.

    next_first: epochs 0..next_first-1 hold the sequential family's next-item prompts only.

    Epochs are independent (each draws from its own seeded generator), so `workers` > 1 renders
    them in forked processes; the rows are identical either way.
    """
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets.table import InMemoryTable

    global _RENDER_JOB
    _RENDER_JOB = (ctx, families, seed, next_first)
    if workers > 1 and epochs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(min(workers, epochs)) as pool:
            parts = pool.map(_render_one, range(epochs))
    else:
        parts = [_render_one(e) for e in range(epochs)]
    if not len(parts[0]):
        raise ConfigError(f"--tasks: the families {families} render no training rows for this dataset")
    if batch_size:  # prompt length in characters (code points), as len() counts them
        parts = [p.take(bucket_order(pc.utf8_length(p["inputs"]).to_numpy(), batch_size, seed + e))
                 for e, p in enumerate(parts)]
    table = pa.concat_tables(parts)  # one chunk per epoch: no copy, and no 2 GB string-offset limit
    return datasets.Dataset(InMemoryTable(table),
                            info=datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(table.schema)))


def bucket_order(lengths, batch_size: int, seed: int, window: int = 64) -> np.ndarray:
    """A row order whose consecutive batches hold prompts of similar length.

    Candidate prompts (100 ids) are ~15x longer than yes/no prompts; batching them together pads
    everything to the longest. Rows are sorted by length inside windows of `window` batches, cut into
    batches, and the batches shuffled (seeded), so batch composition stays random across windows and
    the order is a pure function of (lengths, seed): resume stays exact. Only the very last batch
    may be short, and it stays last so every other batch is full.
    """
    lengths = np.asarray(lengths)
    n, w = len(lengths), batch_size * window
    batches = []
    for s in range(0, n, w):
        idx = np.arange(s, min(n, s + w))
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    tail = [batches.pop()] if len(batches[-1]) < batch_size else []
    perm = np.random.default_rng(seed).permutation(len(batches))
    return np.concatenate([batches[p] for p in perm] + tail).astype(np.int64)


def tokenizer_corpus(rows, ds=None):
    """Texts the SentencePiece model learns from: training prompts and targets plus item text.

    Row order, each prompt before its target; read in Arrow batches (one Beauty epoch iterated
    row by row as dicts cost ~10x more).
    """
    batches = rows.iter(batch_size=10_000) if hasattr(rows, "iter") else \
        ({"inputs": [r["inputs"]], "targets": [r["targets"]]} for r in rows)
    for b in batches:
        for x, y in zip(b["inputs"], b["targets"]):
            yield x
            yield y
    if ds is not None:
        for it in ds.items.values():
            for t in (it.title, it.brand, it.description, *(it.categories or [])):
                if t:
                    yield str(t)


def build_tokenizer(cfg: TrainConfig, spec, pieces, rows, ds, resume_dir: Path | None):
    """The tokenizer of a resumed run, the backbone's own (plus id pieces), or a fresh SentencePiece."""
    from transformers import AutoTokenizer

    from .modeling import load_pretrained_tokenizer
    from .tokenization import add_pieces, check_pieces_atomic, train_sentencepiece

    if resume_dir is not None:
        tok = AutoTokenizer.from_pretrained(str(resume_dir))
    elif spec.pretrained is not None:
        tok = load_pretrained_tokenizer(spec)
        add_pieces(tok, pieces)
    else:
        tok = train_sentencepiece(tokenizer_corpus(rows, ds), Path(cfg.output) / "tokenizer",
                                  vocab_size=cfg.vocab_size, user_defined_symbols=pieces)
    check_pieces_atomic(tok, pieces)
    return tok


def build_model(cfg: TrainConfig, spec, tokenizer):
    from .modeling import P5XModel, apply_lora, build_backbone

    torch.manual_seed(cfg.seed)
    backbone = build_backbone(spec, tokenizer, dropout=None if cfg.dropout == -1.0 else cfg.dropout,
                              output_layer=cfg.output_layer or None)
    if cfg.peft == "lora":
        backbone = apply_lora(backbone, **lora_kwargs(cfg))
    model = P5XModel(backbone, whole_word=cfg.whole_word_embeddings == "on", max_words=cfg.max_words,
                     word_init_std=0.0 if spec.pretrained else None)
    model.label_smoothing = cfg.label_smoothing
    return model


def lora_kwargs(cfg: TrainConfig) -> dict:
    targets = [t for t in cfg.lora_targets.split(",") if t] or None
    return {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "target_modules": targets}


# -- the Trainer ----------------------------------------------------------------------------------

# the training losses logged as loss/<name> besides the total: each family's mean row loss, and the term
LOGGED_LOSSES = (*FAMILIES, "history_unlikelihood")


def _make_trainer_class():
    from transformers import Trainer

    class P5XTrainer(Trainer):
        """HF Trainer that logs the loss per prompt family and saves p5x checkpoints.

        compute_loss: also accumulates each family's mean token loss (task_ids come from the
        Featurizer and never reach the model). log: adds those means as loss/<family>.
        _save: writes a self-describing p5x checkpoint (tied weights made safetensors-safe).
        """

        p5x_save = None  # callable(out_dir, model, state_dict), set by train()
        p5x_history_ul = (0.0, None)  # (weight, item token ids) of --history-unlikelihood, set by train()
        p5x_table_decay = None  # --table-weight-decay when set, else None (every table at --weight-decay)

        def create_optimizer(self, model=None):
            """HF's AdamW groups, then (--table-weight-decay) the token tables moved out of the decayed group
            into one of their own with that decay; done before the first step and before the scheduler
            reads the groups."""
            fresh = self.optimizer is None
            opt = super().create_optimizer(model)
            if fresh and self.p5x_table_decay is not None:
                from .iteminit import item_tables

                tables = item_tables(self.model if model is None else model)
                ids = {id(t) for t in tables}
                for group in opt.param_groups:
                    group["params"] = [q for q in group["params"] if id(q) not in ids]
                trained = [t for t in tables if t.requires_grad]  # none under --peft lora
                if trained:
                    opt.add_param_group({"params": trained, "weight_decay": self.p5x_table_decay})
            return opt

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            task_ids = inputs.pop("task_ids", None)
            if model.training:
                self._count_tokens(model, inputs)
            outputs = model(**inputs)
            loss = outputs.loss
            if task_ids is not None and model.training:
                self._family_losses(outputs["row_loss"], task_ids)
            weight, item_ids = self.p5x_history_ul
            if weight and model.training:
                ul = history_unlikelihood(outputs.logits, inputs["labels"], inputs["input_ids"],
                                          self._item_mask(item_ids, outputs.logits), self._decoder_only(model))
                loss = loss + weight * ul
                slot = torch.full((1,), LOGGED_LOSSES.index("history_unlikelihood"), device=ul.device)
                self._accumulate(slot, ul.detach().reshape(1), torch.ones(1, device=ul.device))
            return (loss, outputs) if return_outputs else loss

        def _decoder_only(self, model):
            return getattr(self.accelerator.unwrap_model(model), "decoder_only", False)

        def _item_mask(self, item_ids, logits):
            """A bool row over the vocabulary, True at item tokens (built once per device)."""
            mask = self.__dict__.get("_items")
            if mask is None or mask.device != logits.device or mask.numel() != logits.shape[-1]:
                mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
                mask[torch.as_tensor(item_ids, device=logits.device)] = True
                self._items = mask
            return mask

        def _family_losses(self, row_loss, task_ids):
            """Each family's summed per-row mean token loss (the model's row_loss, from the same
            cross-entropy as the loss) and row count, accumulated on the device (one [families]
            vector each; read once per logging step, not synced every step)."""
            fid = task_ids.to(row_loss.device)
            known = ((fid >= 0) & (fid < len(FAMILIES))).float()
            self._accumulate(fid.clamp(0, len(FAMILIES) - 1), row_loss * known, known)

        def _accumulate(self, slots, values, counts):
            """Add values and counts at slots of LOGGED_LOSSES: one sum and one count vector on the
            device, read once per logging step (no host sync per training step)."""
            zero = torch.zeros(len(LOGGED_LOSSES), device=values.device)
            s, c = self.__dict__.get("_loss_acc", (zero, zero))
            self._loss_acc = (s.index_add(0, slots, values.float()), c.index_add(0, slots, counts))

        def _count_tokens(self, model, inputs):
            """Accumulate samples and (real, padded) tokens on the device: no host sync per step."""
            tp = self.__dict__.get("_tp")
            if tp is None:
                tp = self._tp = ThroughputMeter(getattr(self.data_collator, "seconds", None))
            tp.add(inputs, self._decoder_only(model))

        def log(self, logs, *args, **kwargs):
            acc = self.__dict__.pop("_loss_acc", None)
            if "loss" in logs:
                if acc is not None:
                    sums, counts = (t.tolist() for t in acc)
                    logs.update({f"loss/{name}": round(s / c, 4)
                                 for name, s, c in zip(LOGGED_LOSSES, sums, counts) if c})
                if self.__dict__.get("_tp") is not None:
                    logs.update(self._tp.interval(self.data_collator))
            elif acc is not None:
                self._loss_acc = acc
            super().log(logs, *args, **kwargs)

        def _save(self, output_dir=None, state_dict=None):
            if self.args.should_save:
                self.p5x_save(output_dir or self.args.output_dir, self.accelerator.unwrap_model(self.model),
                              state_dict)

    return P5XTrainer


def history_unlikelihood(logits, labels, input_ids, item_mask, decoder_only: bool = False) -> torch.Tensor:
    """--history-unlikelihood: the mean, over rows whose answer starts with an item token, of
    sum_h -log(1 - p(h)) at that first answer token, h over the item tokens of the prompt other than
    the answer itself (a next-item prompt: the history; a candidate prompt: the other candidates).

    Cross-entropy alone leaves an item's own row scoring high after itself (its input and output
    rows start alike; on Beauty the trained model put the last history item first for 44-96% of
    users, and it is never the answer there). This term is zero for an item the model already gives
    no mass and large only for the ones it does, so it reshapes the top of the ranking and little else.
    logits/labels as the model returns them: encoder-decoder [B, T, V] with labels [B, T];
    decoder-only the logits of the last positions, labels over the whole (left-padded) row.
    item_mask: bool [V], True at item tokens. Zero (with a graph) when no row qualifies.
    """
    logits, lab = answer_aligned(logits, labels, decoder_only)
    if decoder_only:  # the answer's first position: _answer_loss keeps its predictor, where it varies by row
        first, rows = (lab != -100).float().argmax(1), torch.arange(lab.shape[0], device=lab.device)
        answer, step = lab[rows, first], logits[rows, first].float()
    else:  # always position 0 (labels are right-padded); a slice, cheaper to differentiate than a gather
        answer, step = lab[:, 0], logits[:, 0].float()
    ok = (answer >= 0) & item_mask[answer.clamp(min=0)]
    # the prompt's item tokens, each once: sorted with everything else as -1, repeats dropped.
    # Only these [B, L] scores are gathered; the [B, V] work is one logsumexp.
    ids = input_ids.long()
    cand = item_mask[ids]
    if decoder_only:
        cand &= labels == -100  # the prompt part of the row, not the answer
    ids = torch.where(cand, ids, -1).sort(1).values
    neg = (ids >= 0) & (ids != answer[:, None]) & ok[:, None]
    neg[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    p = (step.gather(1, ids.clamp(min=0)) - step.logsumexp(1, keepdim=True)).exp()
    per_row = -(torch.log1p(-p.clamp(max=1 - 1e-6)) * neg).sum(1)
    return per_row.sum() / ok.sum().clamp(min=1)


# -- pre-tokenization and throughput --------------------------------------------------------------

def encode_rows(featurizer, batch: dict) -> dict:
    """Unpadded sequences of a batch of rows (for datasets.map(batched=True)), as the Featurizer builds them."""
    ids, words = featurizer._prompts(batch["inputs"])
    targets = featurizer.encode_targets(batch["targets"])
    if featurizer.decoder_only:
        labels = [[-100] * len(p) + t for p, t in zip(ids, targets)]
        words = [w + [0] * len(t) for w, t in zip(words, targets)]
        ids = [p + t for p, t in zip(ids, targets)]
    else:
        labels = targets
    return {"input_ids": ids, "whole_word_ids": words, "labels": labels}


def pretokenize(rows, featurizer, workers: int = 1):
    """Rows -> {input_ids, whole_word_ids, labels, task[, kind]}: tokenized once, in row order.

    Stored as int32 / int16 (word ids are clipped below max_words), a quarter to half of the int64
    default: one Beauty epoch is ~780k rows.
    """
    import datasets

    # kind too under --content-prior (its next-item rows; cache_key marks such caches)
    keep = {"input_ids", "whole_word_ids", "labels", "task"} | ({"kind"} if featurizer.mark_next_items else set())
    seq = lambda t: datasets.Sequence(datasets.Value(t))  # noqa: E731
    feats = datasets.Features({"input_ids": seq("int32"), "labels": seq("int32"),
                               "whole_word_ids": seq("int16" if featurizer.max_words < 2 ** 15 else "int32"),
                               **{c: datasets.Value("string") for c in ("task", "kind")
                                  if c in keep and c in rows.column_names}})
    return rows.map(lambda b: encode_rows(featurizer, b), batched=True, batch_size=2000, features=feats,
                    num_proc=workers if workers > 1 else None, desc="pre-tokenizing",
                    remove_columns=[c for c in rows.column_names if c not in keep])


class PaddingCollator:
    """Collator over pre-tokenized rows: it only pads (the same tensors the Featurizer gives raw rows)."""

    def __init__(self, featurizer):
        self.featurizer = featurizer

    def __call__(self, rows: list[dict]) -> dict:
        from .features import FAMILY_IDS, next_item_rows

        f = self.featurizer
        batch = f._pack([r["input_ids"] for r in rows], [r["whole_word_ids"] for r in rows], f.padding_side)
        batch["labels"] = f._pad([r["labels"] for r in rows], -100, f.padding_side if f.decoder_only else "right")
        if all("task" in r for r in rows):
            batch["task_ids"] = torch.tensor([FAMILY_IDS.get(r["task"], -1) for r in rows])
        if f.mark_next_items:
            batch["prior_rows"] = next_item_rows(rows)
        return batch


class TimedCollator:
    """Wraps a collator and adds up the seconds spent in it (data loading runs in the main process)."""

    def __init__(self, inner):
        self.inner, self.seconds, self.batches = inner, 0.0, 0

    def __call__(self, rows):
        t0 = time.perf_counter()
        out = self.inner(rows)
        self.seconds += time.perf_counter() - t0
        self.batches += 1
        return out


class ThroughputMeter:
    """Samples, real tokens (prompt + target, no padding) and padded tokens seen by training steps.

    Counts stay on the device until read (at logging time, when the Trainer syncs anyway).
    The steady rate leaves out the first WARM_BATCHES batches (a GPU's one-time start-up lands
    there) and what comes after the last batch began (the final checkpoint, the loss plot).
    """

    WARM_BATCHES = 3

    def __init__(self, collate_seconds0=None):
        self.t0 = self.t_last = time.perf_counter()
        self.batches = 0
        self.t_warm = self.t_end = None
        self.samples_warm = self.samples_end = 0
        self.samples = self.samples_last = 0
        self.tokens = self.tokens_last = 0
        self.padded = self.padded_last = 0
        self.collate_last = collate_seconds0 or 0.0
        self.collate0 = self.collate_last
        self._dev_tokens = None

    def add(self, inputs, decoder_only: bool) -> None:
        now = time.perf_counter()  # this batch begins: the ones before it are done (up to the GPU's queue)
        if self.batches == self.WARM_BATCHES:
            self.t_warm, self.samples_warm = now, self.samples
        self.t_end, self.samples_end = now, self.samples
        self.batches += 1
        ids, labels = inputs["input_ids"], inputs.get("labels")
        real = inputs["attention_mask"].sum()
        padded = ids.numel()
        if labels is not None and not decoder_only:
            real = real + (labels != -100).sum()
            padded += labels.numel()
        self._dev_tokens = real if self._dev_tokens is None else self._dev_tokens + real
        self.samples += ids.shape[0]
        self.padded += padded

    def _sync(self):
        if self._dev_tokens is not None:
            self.tokens += int(self._dev_tokens)
            self._dev_tokens = None

    def interval(self, collator) -> dict:
        """Rates since the previous call, as log entries."""
        self._sync()
        now = time.perf_counter()
        dt = max(now - self.t_last, 1e-9)
        collate = getattr(collator, "seconds", 0.0)
        out = {"throughput/samples_per_s": round((self.samples - self.samples_last) / dt, 2),
               "throughput/tokens_per_s": round((self.tokens - self.tokens_last) / dt, 1),
               "throughput/padded_tokens_per_s": round((self.padded - self.padded_last) / dt, 1),
               "throughput/collate_share": round((collate - self.collate_last) / dt, 4)}
        self.t_last, self.samples_last, self.tokens_last, self.padded_last = now, self.samples, self.tokens, self.padded
        self.collate_last = collate
        return out

    def summary(self, collator) -> dict:
        """Totals and rates over this process's training steps (one stage of a resumed run)."""
        self._sync()
        dt = max(time.perf_counter() - self.t0, 1e-9)
        collate = getattr(collator, "seconds", 0.0) - self.collate0
        steady = None
        if self.t_warm is not None and self.t_end > self.t_warm:
            steady = round((self.samples_end - self.samples_warm) / (self.t_end - self.t_warm), 2)
        return {"seconds": round(dt, 3), "samples": self.samples, "tokens": self.tokens,
                "steady_samples_per_s": steady,
                "padded_tokens": self.padded, "samples_per_s": round(self.samples / dt, 2),
                "tokens_per_s": round(self.tokens / dt, 1), "padded_tokens_per_s": round(self.padded / dt, 1),
                "collate_seconds": round(collate, 3), "collate_share": round(collate / dt, 4)}


def time_limit_callback(seconds: float):
    """Ends training cleanly (checkpoint saved) once `seconds` have passed since it began.

    The LR schedule still spans the whole run, so a run cut into stages and resumed equals one run.
    """
    import time

    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.t0 > seconds and state.global_step < state.max_steps:
                control.should_save = True
                control.should_training_stop = True
                print(f"note: --time-limit {seconds:g}s reached at step {state.global_step}/{state.max_steps}; "
                      "checkpoint saved, continue with --resume", file=sys.stderr)

    return TimeLimit()


def item_warmup_callback(model, token_ids: list[int], steps: int):
    """Scales each optimizer update of the item-token rows (input table and an untied output layer) by
    min(1, (step + 1) / steps): the rows move slowly while the shared weights, random at the start,
    learn to read them. The optimizer still sees every gradient, so its moments for those rows are
    warm when the scale reaches 1. Depends on the global step only, so a resumed run equals one run."""
    from transformers import TrainerCallback

    from .iteminit import item_tables

    tables = item_tables(model)
    rows = torch.tensor(sorted(set(token_ids)), dtype=torch.long)

    class ItemWarmup(TrainerCallback):
        def __init__(self):
            self.scale, self.before = 1.0, []

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.scale = min(1.0, (state.global_step + 1) / steps)
            if self.scale < 1.0:
                self.idx = rows.to(tables[0].device)  # the model is on its device once training runs
                self.before = [w.detach()[self.idx].clone() for w in tables]

        def on_optimizer_step(self, args, state, control, **kwargs):
            if self.scale < 1.0:
                with torch.no_grad():
                    for w, old in zip(tables, self.before):
                        w[self.idx] = old + self.scale * (w[self.idx] - old)
                self.before = []

    return ItemWarmup()


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 units oneDNN uses (AVX512-BF16 or AMX); without them bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_BF16_WARNED = []


def warn_if_emulated_bf16(device: str, bf16: bool) -> None:
    """One stderr line when bf16 is asked for on a CPU without bf16 units, where autocast is emulated
    and several times slower than fp32 (measured on an AVX2-only CPU: a 100-prompt SmolLM2 scoring pass
    took under a minute in fp32 and over six minutes under bf16 autocast)."""
    if bf16 and device == "cpu" and not cpu_has_bf16() and not _BF16_WARNED:
        _BF16_WARNED.append(True)
        print("warning: --bf16 on, but this CPU has no bf16 units (no AVX512-BF16/AMX): bf16 is emulated and much "
              "slower than fp32; use --bf16 off here", file=sys.stderr)


def training_arguments(cfg: TrainConfig):
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available() and not cfg.use_cpu
    bf16 = cuda if cfg.bf16 == "auto" else cfg.bf16 == "on"
    warn_if_emulated_bf16("cuda" if cuda else "cpu", bf16)
    return TrainingArguments(
        output_dir=cfg.output, num_train_epochs=1, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear", seed=cfg.seed, data_seed=cfg.seed, bf16=bf16, use_cpu=cfg.use_cpu,
        deepspeed=cfg.deepspeed or None, save_strategy="steps", save_steps=cfg.save_steps,
        logging_steps=cfg.logging_steps, report_to=["tensorboard"], remove_unused_columns=False,
        train_sampling_strategy="sequential",  # epochs are pre-shuffled; keeps resume exact
        dataloader_num_workers=0, disable_tqdm=False)


def plot_losses(log_history: list[dict], path: Path) -> None:
    """loss_curve.png: total and per-family training loss against step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    keys = ["loss"] + sorted({k for h in log_history for k in h if k.startswith("loss/")})
    for k in keys:
        pts = [(h["step"], h[k]) for h in log_history if k in h]
        if pts:
            ax.plot(*zip(*pts), label=k, lw=2 if k == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    if ax.get_lines():
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


# -- assembling a run -----------------------------------------------------------------------------

def templates_hash() -> str:
    """SHA-256 over the template files (name + bytes), so a checkpoint records which wordings it saw."""
    import hashlib

    from .paths import TEMPLATES_DIR

    h = hashlib.sha256()
    for f in sorted(Path(TEMPLATES_DIR).glob("*.json")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def trained_families(rows, cfg: TrainConfig) -> list[str]:
    """The families the rendered rows hold (for 'all': what the data supported), in family order."""
    if "task" not in rows.column_names:
        return cfg.families()
    present = set(rows.unique("task"))
    return [f for f in FAMILIES + EXTRA_FAMILIES if f in present]


def task_rows(ds, cfg: TrainConfig):
    """(item index, user index, rows of every epoch) from p5x.tasks: the default row source."""
    from .tasks import make_context

    if cfg.shots:  # exactly N fixed preference rows per epoch, none from held-out users
        from .fewshot import fewshot_task_rows
        return fewshot_task_rows(ds, cfg)
    from .tasks import resolve_families

    ctx = make_context(ds, index_method=cfg.index, seed=cfg.seed)
    if cfg.kind_counts:
        ctx.train_counts = parse_kind_counts(cfg.kind_counts)
    ctx.history_dropout = cfg.history_dropout
    ctx.cut_weighting = cfg.cut_weighting
    # 'all' is the standard families plus those the data supports (preference: ratings and titles)
    families = resolve_families(ctx, "all") if cfg.tasks == "all" else cfg.families()
    return ctx.index, ctx.user_index, render_epochs(ctx, families, cfg.epochs, cfg.seed, cfg.batch_size,
                                                    cfg.workers, cfg.next_first)


CACHE_DIR = "pretokenized"
CACHE_FORMAT = 2  # bump when the encoding of rows changes (2: decoder-only text targets after a space)
_CACHE_FIELDS = ("tasks", "model", "epochs", "batch_size", "seed", "index", "max_source_len", "max_target_len",
                 "max_words", "vocab_size", "shots", "holdout_users", "holdout_seed", "kind_counts", "next_first",
                 "word_numbering", "history_dropout", "cut_weighting")
# options added after caches existed: at these values they leave the key out, so those caches stay valid
_CACHE_DEFAULTS = {"kind_counts": "", "next_first": 0, "word_numbering": "p5", "history_dropout": 0.0,
                   "cut_weighting": "user"}


def cache_key(cfg: TrainConfig, ds) -> dict:
    """What the pre-tokenized rows depend on; a cache with another key is rebuilt, never reused."""
    return {"data_hash": ds.data_hash, "templates_hash": templates_hash(), "format": CACHE_FORMAT,
            **{k: getattr(cfg, k) for k in _CACHE_FIELDS if k not in _CACHE_DEFAULTS
               or getattr(cfg, k) != _CACHE_DEFAULTS[k]},
            **({"kind_column": True} if cfg.content_prior else {})}  # --content-prior keeps each row's kind


def load_cache(out: Path, key: dict):
    """(item index, user index, tokenizer, rows) from OUTPUT/pretokenized, or None when absent or stale."""
    import datasets
    from transformers import AutoTokenizer

    from .indexing import ItemIndex

    d = out / CACHE_DIR
    if not (d / "key.json").is_file():
        return None
    if json.loads((d / "key.json").read_text()) != key:
        print(f"note: {d} was built with other options; rebuilding it", file=sys.stderr)
        return None
    users = ItemIndex.load(d / "user_index.json") if (d / "user_index.json").is_file() else None
    return (ItemIndex.load(d / "item_index.json"), users, AutoTokenizer.from_pretrained(str(d / "tokenizer")),
            datasets.load_from_disk(str(d / "rows")))


def save_cache(out: Path, key: dict, index, user_index, tokenizer, rows) -> None:
    """Write the cache to a temporary folder and rename it into place (key.json last inside it)."""
    import shutil
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pretokenized.", dir=out))
    rows.save_to_disk(str(tmp / "rows"))
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    index.save(tmp / "item_index.json")
    if user_index is not None:
        user_index.save(tmp / "user_index.json")
    (tmp / "key.json").write_text(json.dumps(key, indent=1))
    final = out / CACHE_DIR
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def last_checkpoint(output: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(c) if output.is_dir() and (c := get_last_checkpoint(str(output))) else None


def train(cfg: TrainConfig, make_rows=task_rows, callbacks=()) -> Path:
    """Run one training; returns the output directory holding the final checkpoint.

    make_rows(ds, cfg) -> (item index, user index, datasets.Dataset of rows, all epochs in order).
    callbacks: factories featurizer -> transformers.TrainerCallback (p5x.fewshot's validation
    selection scores prompts with the run's featurizer).
    """
    from .features import Featurizer
    from .modeling import resolve_backbone
    from .schema import load_dataset

    cfg.validate()
    out = Path(cfg.output)
    spec = resolve_backbone(cfg.model)
    if cfg.content_prior and spec.decoder_only:
        raise ConfigError(f"--content-prior: needs an encoder-decoder (T5) backbone, got {cfg.model}")
    ds = load_dataset(cfg.data)
    resume_from = last_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        print(f"note: no checkpoint in {out} to resume from; starting fresh", file=sys.stderr)
    key = cache_key(cfg, ds)
    cached = load_cache(out, key) if cfg.pretokenize else None
    took: dict[str, float] = {}  # seconds per preparation stage, printed once the rows are ready
    if cached is not None:  # rows, indexes and tokenizer exactly as the run that built them
        index, user_index, tokenizer, rows = cached
    else:
        t0 = time.perf_counter()
        index, user_index, rows = make_rows(ds, cfg)
        took["render"] = time.perf_counter() - t0
        pieces = list(index.pieces()) + (list(user_index.pieces()) if user_index is not None else [])
        t0 = time.perf_counter()
        tokenizer = build_tokenizer(cfg, spec, pieces, rows.select(range(min(len(rows), 200_000))), ds,
                                    resume_from)
        took["tokenizer"] = time.perf_counter() - t0
    # a resumed run keeps the target encoding it started with (absent: written before the key existed)
    target_space = None
    if resume_from is not None:
        from .checkpoint import read_config
        target_space = read_config(resume_from).get("target_space", False)
    # decoder-only batches are left-padded so every answer ends the row and the loss needs the
    # vocabulary logits of only the last few positions (P5XModel._answer_loss)
    featurizer = Featurizer(tokenizer, spec.decoder_only, cfg.whole_word_embeddings == "on",
                            cfg.max_source_len, cfg.max_target_len, cfg.max_words,
                            padding_side="left" if spec.decoder_only else "right", target_space=target_space,
                            word_numbering=cfg.word_numbering)
    if cfg.content_prior:
        if "kind" not in rows.column_names:
            raise ConfigError("--content-prior: these training rows have no 'kind' column to find next-item prompts by")
        featurizer.mark_next_items = True
    if cfg.pretokenize and cached is None:
        t0 = time.perf_counter()
        rows = pretokenize(rows, featurizer, cfg.workers)
        save_cache(out, key, index, user_index, tokenizer, rows)
        rows = load_cache(out, key)[3]  # memory-mapped from disk rather than held in RAM
        took["pre-tokenize + save"] = time.perf_counter() - t0
    if took:
        print(f"prepared {len(rows)} rows: " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()),
              file=sys.stderr)
    if cfg.prepare_only:
        print(f"pre-tokenized {len(rows)} rows into {out / CACHE_DIR}", file=sys.stderr)
        return out
    model = build_model(cfg, spec, tokenizer)
    init_s = 0.0  # seconds spent fitting the item rows (throughput.json: not start-up a resumed stage pays)
    if cfg.item_init != "random" and resume_from is None:  # resumed: the checkpoint's trained rows are loaded
        from .iteminit import cache_dir, init_item_embeddings
        from .split import time_split

        t0 = time.perf_counter()
        gpu = "cuda" if torch.cuda.is_available() and not cfg.use_cpu else None  # eigh / Markov fit there: seconds
        n = init_item_embeddings(model, tokenizer, index, time_split(ds), cfg.seed, gpu, cfg.item_init,
                                 progress=True, cache=cache_dir(cfg.item_init_cache))
        source = {"cooc": "training co-occurrence", "markov": "a next-item model of the training histories",
                  "markov-untied": "a next-item model of the training histories (input and output rows)"}
        init_s = time.perf_counter() - t0
        print(f"item embeddings: {n} of {len(index)} rows from {source[cfg.item_init]} ({init_s:.1f} s)",
              file=sys.stderr)
    if cfg.content_prior:
        from .content import AnswerPrior, ContentPrior
        from .iteminit import item_token_ids

        t0 = time.perf_counter()
        model.answer_prior = AnswerPrior(ContentPrior(ds, list(index.codes), cfg.content_items, cfg.content_decay),
                                         item_token_ids(tokenizer, index, "--content-prior"), cfg.content_prior)
        print(f"content prior: {len(index)} items' texts, weight {cfg.content_prior:g} "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    meta = {"backbone": cfg.model, "backbone_kind": spec.kind, "pretrained": spec.pretrained,
            "whole_word": cfg.whole_word_embeddings == "on", "max_words": cfg.max_words,
            "word_numbering": cfg.word_numbering, "target_space": featurizer.target_space,
            "max_source_len": cfg.max_source_len, "max_target_len": cfg.max_target_len,
            "tasks": trained_families(rows, cfg), "indexing": cfg.index, "seed": cfg.seed, "data_hash": ds.data_hash,
            "data_name": ds.name, "templates_hash": templates_hash(),
            "peft": lora_kwargs(cfg) if cfg.peft == "lora" else None, "train_config": asdict(cfg),
            "content_prior": {"weight": cfg.content_prior, "items_back": cfg.content_items,
                              "decay": cfg.content_decay} if cfg.content_prior else None}

    def save(out_dir, m, state_dict=None):
        from .checkpoint import save_checkpoint
        save_checkpoint(out_dir, m, tokenizer, meta, index, user_index, state_dict)

    trainer_cls = _make_trainer_class()
    trainer_cls.p5x_save = staticmethod(save)
    collator = TimedCollator(PaddingCollator(featurizer) if cfg.pretokenize else featurizer)
    extra = [time_limit_callback(cfg.time_limit)] if cfg.time_limit > 0 else []
    if cfg.item_warmup_steps:
        from .iteminit import item_token_ids
        extra.append(item_warmup_callback(model, item_token_ids(tokenizer, index), cfg.item_warmup_steps))
    if cfg.table_weight_decay != -1.0:
        trainer_cls.p5x_table_decay = cfg.table_weight_decay
    if cfg.history_unlikelihood:
        from .iteminit import item_token_ids
        trainer_cls.p5x_history_ul = (cfg.history_unlikelihood,
                                      item_token_ids(tokenizer, index, "--history-unlikelihood"))
    trainer = trainer_cls(model=model, args=training_arguments(cfg), train_dataset=rows, data_collator=collator,
                          callbacks=extra + [make(featurizer) for make in callbacks])
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.save_model(str(out))
    if trainer.args.should_save:
        trainer.state.save_to_json(str(out / "trainer_state.json"))
        plot_losses(trainer.state.log_history, out / "loss_curve.png")
        if cfg.merge:
            from .checkpoint import merge_lora
            merge_lora(out, out / "merged")
        write_throughput(out, trainer, model, cfg, collator, init_s)
    return out


def write_throughput(out: Path, trainer, model, cfg: TrainConfig, collator, item_init_s: float = 0.0) -> None:
    """OUTPUT/throughput.json: this process's training rates (one stage when resumed), for bench/;
    item_init_s: the seconds this process spent fitting --item-init rows (0 when resumed)."""
    meter = trainer.__dict__.get("_tp")
    if meter is None:  # resumed past the last step: nothing trained here
        return
    from .metrics import device_name

    rows = len(trainer.train_dataset)
    per_step = cfg.batch_size * cfg.grad_accum * max(trainer.args.world_size, 1)
    summary = meter.summary(collator)
    steady = summary["steady_samples_per_s"]
    # (the meter counts this process's samples: a step takes batch_size * grad_accum of them)
    res = {**summary,
           "steady_steps_per_s": None if steady is None else round(steady / (cfg.batch_size * cfg.grad_accum), 4),
           "global_step": trainer.state.global_step, "max_steps": trainer.state.max_steps,
           "done": trainer.state.global_step >= trainer.state.max_steps, "batch_size": cfg.batch_size,
           # rows = every rendered epoch; passes > 1 when --max-steps ran past them (the rows repeat)
           "rows": rows, "passes": round(trainer.state.global_step * per_step / max(rows, 1), 4),
           "grad_accum": cfg.grad_accum, "params": sum(p.numel() for p in model.parameters()),
           "bf16": bool(trainer.args.bf16), "pretokenized": cfg.pretokenize, "item_init_seconds": round(item_init_s, 2),
           "device": device_name("cpu" if trainer.args.use_cpu or not torch.cuda.is_available() else "cuda")}
    tmp = out / ".throughput.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(out / "throughput.json")


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        out = train(cfg)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"pre-tokenized rows written to {out / CACHE_DIR}" if cfg.prepare_only else f"checkpoint written to {out}")
    return 0
