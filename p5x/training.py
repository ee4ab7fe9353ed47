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
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, P5XError

FAMILIES = ("rating", "sequential", "direct", "explanation", "review")
EXTRA_FAMILIES = ("zeroshot", "preference")  # trainable by name (p5x.tasks), not part of "all"


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
    model: str = field(default="t5-tiny", metadata={"help": "backbone name (t5-tiny, t5-small, t5-base, llama-tiny, smollm2-135m) or a local HF checkpoint dir"})
    output: str = field(default="runs/default", metadata={"help": "output / checkpoint directory"})
    epochs: int = field(default=1, metadata={"help": "epochs (each renders fresh training prompts)"})
    batch_size: int = field(default=32, metadata={"help": "per-device batch size"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (linear decay)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    seed: int = field(default=0, metadata={"help": "seed for init, indexing, rendering and data order"})
    index: str = field(default="random", metadata={"help": "item indexing: random, sequential or collaborative"})
    whole_word_embeddings: str = field(default="on", metadata={"help": "add whole-word embeddings: on or off"})
    peft: str = field(default="none", metadata={"help": "parameter-efficient tuning: none or lora"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_targets: str = field(default="", metadata={"help": "comma list of LoRA target modules (default q,v projections)"})
    max_source_len: int = field(default=512, metadata={"help": "max prompt tokens (100 candidate ids need ~450)"})
    max_target_len: int = field(default=64, metadata={"help": "max target tokens (eos included)"})
    max_words: int = field(default=512, metadata={"help": "whole-word embedding table size (indices clipped)"})
    vocab_size: int = field(default=8000, metadata={"help": "SentencePiece vocabulary size when the backbone brings no tokenizer"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: all epochs)"})
    save_steps: int = field(default=500, metadata={"help": "write a resumable checkpoint every N steps"})
    logging_steps: int = field(default=10, metadata={"help": "log losses every N steps"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in --output"})
    deepspeed: str = field(default="", metadata={"help": "DeepSpeed JSON config (launch with the deepspeed launcher)"})
    use_cpu: bool = field(default=False, metadata={"help": "train on CPU even when CUDA is present"})
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
        for name, allowed in (("index", ("random", "sequential", "collaborative")),
                              ("whole_word_embeddings", ("on", "off")), ("peft", ("none", "lora"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')}: expected one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "grad_accum", "max_source_len", "max_target_len", "max_words"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.lr <= 0:
            raise ConfigError("--lr: must be positive")
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

def render_epochs(ctx, families, epochs: int, seed: int, batch_size: int = 0):
    """Every epoch's training rows, each shuffled with seed + epoch, concatenated in epoch order."""
    import datasets

    from . import tasks

    parts = [tasks.render(ctx, families, "train", epoch=e).shuffle(seed=seed + e) for e in range(epochs)]
    if not len(parts[0]):
        raise ConfigError(f"--tasks: the families {families} render no training rows for this dataset")
    if batch_size:
        parts = [p.select(bucket_order([len(s) for s in p["inputs"]], batch_size, seed + e))
                 for e, p in enumerate(parts)]
    return datasets.concatenate_datasets(parts).flatten_indices()


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
    """Texts the SentencePiece model learns from: training prompts and targets plus item text."""
    for r in rows:
        yield r["inputs"]
        yield r["targets"]
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
    backbone = build_backbone(spec, tokenizer)
    if cfg.peft == "lora":
        backbone = apply_lora(backbone, **lora_kwargs(cfg))
    return P5XModel(backbone, whole_word=cfg.whole_word_embeddings == "on", max_words=cfg.max_words,
                    word_init_std=0.0 if spec.pretrained else None)


def lora_kwargs(cfg: TrainConfig) -> dict:
    targets = [t for t in cfg.lora_targets.split(",") if t] or None
    return {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "target_modules": targets}


# -- the Trainer ----------------------------------------------------------------------------------

def _make_trainer_class():
    from transformers import Trainer

    class P5XTrainer(Trainer):
        """HF Trainer that logs the loss per prompt family and saves p5x checkpoints.

        compute_loss: also accumulates each family's mean token loss (task_ids come from the
        Featurizer and never reach the model). log: adds those means as loss/<family>.
        _save: writes a self-describing p5x checkpoint (tied weights made safetensors-safe).
        """

        p5x_save = None  # callable(out_dir, model, state_dict), set by train()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            task_ids = inputs.pop("task_ids", None)
            outputs = model(**inputs)
            if task_ids is not None and model.training:
                self._family_losses(outputs.logits.detach(), inputs["labels"], task_ids, model)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

        def _family_losses(self, logits, labels, task_ids, model):
            decoder_only = getattr(self.accelerator.unwrap_model(model), "decoder_only", False)
            if decoder_only:  # position t predicts token t + 1
                logits, labels = logits[:, :-1], labels[:, 1:]
            tok = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                                    reduction="none")
            n = (labels != -100).sum(1).clamp(min=1)
            per_row = tok.sum(1) / n
            acc = self.__dict__.setdefault("_fam_acc", {})
            for fid, fam in enumerate(FAMILIES):
                m = task_ids.to(per_row.device) == fid
                if m.any():
                    s, c = acc.get(fam, (0.0, 0))
                    acc[fam] = (s + float(per_row[m].sum()), c + int(m.sum()))

        def log(self, logs, *args, **kwargs):
            acc = self.__dict__.pop("_fam_acc", {})
            if "loss" in logs:
                logs.update({f"loss/{fam}": round(s / c, 4) for fam, (s, c) in acc.items()})
            else:
                self._fam_acc = acc
            super().log(logs, *args, **kwargs)

        def _save(self, output_dir=None, state_dict=None):
            if self.args.should_save:
                self.p5x_save(output_dir or self.args.output_dir, self.accelerator.unwrap_model(self.model),
                              state_dict)

    return P5XTrainer


def training_arguments(cfg: TrainConfig):
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available() and not cfg.use_cpu
    return TrainingArguments(
        output_dir=cfg.output, num_train_epochs=1, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear", seed=cfg.seed, data_seed=cfg.seed, bf16=cuda, use_cpu=cfg.use_cpu,
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


def task_rows(ds, cfg: TrainConfig):
    """(item index, user index, rows of every epoch) from p5x.tasks: the default row source."""
    from .tasks import make_context

    ctx = make_context(ds, index_method=cfg.index, seed=cfg.seed)
    return ctx.index, ctx.user_index, render_epochs(ctx, cfg.families(), cfg.epochs, cfg.seed, cfg.batch_size)


def last_checkpoint(output: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(c) if output.is_dir() and (c := get_last_checkpoint(str(output))) else None


def train(cfg: TrainConfig, make_rows=task_rows) -> Path:
    """Run one training; returns the output directory holding the final checkpoint.

    make_rows(ds, cfg) -> (item index, user index, datasets.Dataset of rows, all epochs in order).
    """
    from .features import Featurizer
    from .modeling import resolve_backbone
    from .schema import load_dataset

    cfg.validate()
    out = Path(cfg.output)
    spec = resolve_backbone(cfg.model)
    ds = load_dataset(cfg.data)
    index, user_index, rows = make_rows(ds, cfg)
    resume_from = last_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        print(f"note: no checkpoint in {out} to resume from; starting fresh", file=sys.stderr)
    pieces = list(index.pieces()) + (list(user_index.pieces()) if user_index is not None else [])
    tokenizer = build_tokenizer(cfg, spec, pieces, rows.select(range(min(len(rows), 200_000))), ds, resume_from)
    model = build_model(cfg, spec, tokenizer)
    featurizer = Featurizer(tokenizer, spec.decoder_only, cfg.whole_word_embeddings == "on",
                            cfg.max_source_len, cfg.max_target_len, cfg.max_words)
    meta = {"backbone": cfg.model, "backbone_kind": spec.kind, "pretrained": spec.pretrained,
            "whole_word": cfg.whole_word_embeddings == "on", "max_words": cfg.max_words,
            "max_source_len": cfg.max_source_len, "max_target_len": cfg.max_target_len,
            "tasks": cfg.families(), "indexing": cfg.index, "seed": cfg.seed, "data_hash": ds.data_hash,
            "data_name": ds.name, "templates_hash": templates_hash(),
            "peft": lora_kwargs(cfg) if cfg.peft == "lora" else None, "train_config": asdict(cfg)}

    def save(out_dir, m, state_dict=None):
        from .checkpoint import save_checkpoint
        save_checkpoint(out_dir, m, tokenizer, meta, index, user_index, state_dict)

    trainer_cls = _make_trainer_class()
    trainer_cls.p5x_save = staticmethod(save)
    trainer = trainer_cls(model=model, args=training_arguments(cfg), train_dataset=rows, data_collator=featurizer)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.save_model(str(out))
    if trainer.args.should_save:
        trainer.state.save_to_json(str(out / "trainer_state.json"))
        plot_losses(trainer.state.log_history, out / "loss_curve.png")
    return out


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        out = train(cfg)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint written to {out}")
    return 0
