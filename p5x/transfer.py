"""Zero-shot transfer across domains: train on dataset A, evaluate on dataset B with the Z templates.

    python -m p5x.transfer --source A_DIR --target B_DIR --out DIR [--checkpoint CKPT | train options]
    python -m p5x.transfer --pairs A_DIR,B_DIR,C_DIR --out DIR   # each trained once, scored on all

The model is trained on A (or loaded from --checkpoint, which must have been trained on A with the
`zeroshot` family) and scored on the held-out part of A (A→A, for reference) and of B (A→B) with
every `zeroshot` template (templates/zeroshot.json, seen and unseen apart). Z templates describe
items by text (title, brand, categories, price), so nothing of B has to be in A's item index.

How B is rendered. B gets its own item and user indexes (p5x.indexing, random method, the run's
seed) only so that p5x.tasks can render its prompts: the {user} ids of B are pieces A's model saw for
other people and mean nothing to it, and no B item id ever appears in a Z prompt. A's tokenizer was
fitted to A's text; B's words may fall apart into rare pieces or the unknown token. That is part of
the zero-shot result, so it is measured (meta.tokenizer: unknown-token rate of the rendered prompts
and targets, and the most frequent words that hold an unknown piece), not repaired.

Metrics per kind (p5x.evaluate.Evaluator): rating RMSE/MAE, an unparsable output scored as A's
TRAINING mean (B's training ratings are visible in the zero-shot setting only as history, never as
a statistic to fit); like AUC from P(yes); explanation BLEU-4 and ROUGE; next_text: the 20 candidate
titles of each row ranked by log P(title | prompt), HR@1/5/10 and NDCG@5/10, "sampled 1-of-20".

Trivial baselines on each evaluated dataset, on the same rows (the rows of the kind's first
template; baselines ignore the wording): rating = A's training mean; like = seeded random scores;
explanation = the item's title echoed back; next_text = seeded random order, and popularity of
each candidate among the interactions visible before the evaluated part (histories).

Output: OUT/metrics.json and OUT/metrics.md (p5x.metrics.write_results); the model column reads
"p5x (<backbone>) A→B" and baselines "<name> @ B". Checkpoints trained here go to OUT/ckpt-<A>.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from .errors import ConfigError, P5XError
from .evaluate import SAMPLED_KS, SAMPLED_NDCG_KS, EvalConfig, Evaluator
from .schema import load_dataset
from .tasks import TEXT_CANDIDATES, TaskContext, applicable, make_context, render

FAMILY = "zeroshot"
ARROW = "→"


@dataclass
class TransferConfig:
    """Options of `python -m p5x.transfer` (see --help)."""

    sources: list[Path]
    targets: list[Path]
    out: Path
    checkpoint: Path | None = None
    train: dict = field(default_factory=dict)   # TrainConfig fields (model, epochs, max_steps, ...)
    split: str = "test"
    templates: tuple[str, ...] = ("seen", "unseen")
    max_users: int | None = None
    batch_size: int = 16
    baselines: bool = True
    device: str = "auto"
    progress: bool = True
    seed: int = 0


def label(path: Path) -> str:
    """A dataset's name in the table: its directory name (two toy sets both call themselves 'toy')."""
    return Path(path).resolve().name


def _device(cfg: TransferConfig) -> str:
    return cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def _check_titles(ds, path: Path) -> None:
    ok, why = applicable(TaskContext(ds, None, None, None, {}), FAMILY)
    if not ok:
        raise ConfigError(f"{path}: {why} (Z templates describe items by title)")


def train_source(cfg: TransferConfig, source: Path) -> Path:
    """Train on `source` with the zeroshot family included; returns the checkpoint directory."""
    from .training import TrainConfig, train

    opts = {"tasks": FAMILY, "max_source_len": 384, "seed": cfg.seed, **cfg.train}
    tc = TrainConfig(data=str(source), output=str(cfg.out / f"ckpt-{label(source)}"),
                     use_cpu=_device(cfg) == "cpu", **opts)
    if FAMILY not in tc.families():
        raise ConfigError(f"--tasks: must include {FAMILY} (got {tc.tasks!r}): A's model has to learn "
                          "the text-described prompts it is scored with")
    return train(tc)


def _check_checkpoint(ckpt, path: Path) -> None:
    tasks = ckpt.config.get("tasks") or []
    if FAMILY not in tasks:
        raise ConfigError(f"{path}: trained on {', '.join(tasks) or 'no recorded tasks'}, not the "
                          f"{FAMILY} family; train with --tasks including {FAMILY}")


def tokenizer_coverage(tokenizer, texts: list[str], top: int = 10) -> dict:
    """Share of tokens that are the unknown token, the most frequent words holding one, and tokens
    per whitespace word (a vocabulary fitted to A splits B's words into more, rarer pieces; with
    full character coverage that, more than <unk>, is how a domain gap shows)."""
    unk = tokenizer.unk_token_id
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    total = sum(len(ids) for ids in enc)
    per_word = total / max(1, sum(len(t.split()) for t in texts))
    if unk is None or not texts:  # byte-level vocabularies have no unknown token
        return {"unk_token": None, "unk_rate": 0.0, "tokens": total, "tokens_per_word": per_word,
                "unknown_words": []}
    n_unk = sum(ids.count(unk) for ids in enc)
    words: Counter = Counter()
    if n_unk:
        for text, ids in zip(texts, enc):
            if unk in ids:
                for w in set(text.split()):
                    if unk in tokenizer(w, add_special_tokens=False)["input_ids"]:
                        words[w] += 1
    return {"unk_token": tokenizer.convert_ids_to_tokens(unk), "unk_rate": n_unk / max(1, total),
            "tokens": total, "tokens_per_word": per_word, "unknown_words": [w for w, _ in words.most_common(top)]}


def _eval_config(cfg: TransferConfig, ckpt_dir: Path) -> EvalConfig:
    return EvalConfig(ckpt_dir, split=cfg.split, templates=cfg.templates, batch_size=cfg.batch_size,
                      max_users=cfg.max_users, baselines=False, progress=cfg.progress,
                      per_kind=0)  # the Z family is small: every template


def evaluate_direction(ckpt, ckpt_dir: Path, ctx, cfg: TransferConfig, train_mean: float,
                       direction: str) -> tuple[list[dict], dict]:
    """The model's rows on ctx's dataset (every Z template group) and the tokenizer coverage."""
    ev = Evaluator(ckpt, ctx.ds, _eval_config(cfg, ckpt_dir), ctx=ctx, train_mean=train_mean)
    rows, texts = [], []
    for group in cfg.templates:
        for r in ev.family(FAMILY, group):
            r["model"] = f"p5x ({ckpt.config.get('backbone', '?')}) {direction}"
            r["direction"] = direction
            rows.append(r)
        shown = render(ctx, [FAMILY], cfg.split, templates=ev.template_ids(FAMILY, group), users=ev.users())
        texts += list(shown["inputs"]) + list(shown["targets"])
    return rows, tokenizer_coverage(ckpt.tokenizer, texts)


def _first_template_rows(ctx, cfg: TransferConfig, ev: Evaluator) -> dict[str, object]:
    """kind -> the evaluated rows of that kind's first seen template."""
    rows = render(ctx, [FAMILY], cfg.split, templates="seen", users=ev.users())
    out = {}
    for t in ctx.templates[FAMILY].seen():
        if t.kind not in out:
            idx = [i for i, tid in enumerate(rows["template_id"]) if tid == t.id]
            if idx:
                out[t.kind] = rows.select(idx)
    return out


def _visible_popularity(ctx, part: str) -> Counter:
    """Interactions a model may see before predicting `part`: train, plus validation for test."""
    pop = Counter(x.item_id for xs in ctx.split.train.values() for x in xs)
    if part == "test":
        pop.update(x.item_id for x in ctx.split.valid.values())
    return pop


def baseline_rows(ctx, cfg: TransferConfig, ev: Evaluator, train_mean: float, name: str,
                  source_name: str, skip: set) -> list[dict]:
    """Trivial baselines on dataset `name`; `skip` holds (baseline, dataset) pairs already done."""
    rng = np.random.default_rng(cfg.seed)
    title = lambda i: ctx.ds.items[i].title or i  # noqa: E731
    out = []

    def add(model, kind, protocol, metrics, n):
        out.append({"model": f"{model} @ {name}", "task": f"{FAMILY}/{kind}", "protocol": protocol,
                    "templates": "-", "metrics": metrics, "n": n, "direction": f"- {ARROW} {name}"})

    for kind, rows in _first_template_rows(ctx, cfg, ev).items():
        n = len(rows)
        if kind == "rating":  # depends on the source: one row per (A, B)
            labels = list(rows["label"])
            add(f"mean rating of {source_name} train ({train_mean:.2f})", kind, "all records",
                {"RMSE": M.rmse([train_mean] * n, labels), "MAE": M.mae([train_mean] * n, labels), "n": n}, n)
            continue
        if (kind, name) in skip:
            continue
        skip.add((kind, name))
        if kind == "like":
            y = np.asarray(rows["label"], dtype=float)
            s = rng.random(n)
            add("random", kind, "yes/no rows", {"AUC": M.auc(y, s) if 0 < y.sum() < n else float("nan"),
                                                "n": n}, n)
        elif kind in ("explain", "explain_feature"):
            preds = [title(i) for i in rows["item_id"]]
            refs = list(rows["targets"])
            add("title echo", kind, "all records", {"BLEU-4": M.bleu4(preds, refs), **M.rouge(preds, refs)}, n)
        elif kind == "next_text":
            protocol = f"sampled 1-of-{TEXT_CANDIDATES}"
            cands, targets = list(rows["candidates"]), list(rows["item_id"])
            rand = [[c[j] for j in rng.permutation(len(c))] for c in cands]
            add("random", kind, protocol, M.ranking_metrics(rand, targets, SAMPLED_KS, SAMPLED_NDCG_KS), n)
            pop = _visible_popularity(ctx, cfg.split)
            by_pop = [sorted(c, key=lambda i: -pop[i]) for c in cands]  # stable: ties keep list order
            add("popularity (visible histories)", kind, protocol,
                M.ranking_metrics(by_pop, targets, SAMPLED_KS, SAMPLED_NDCG_KS), n)
    return out


def _train_mean(ctx) -> float:
    ratings = [x.rating for xs in ctx.split.train.values() for x in xs if x.rating is not None]
    return float(np.mean(ratings)) if ratings else 3.0


def run_source(cfg: TransferConfig, source: Path, targets: list[Path], skip: set) -> tuple[list[dict], dict]:
    """Train (or load) on `source`; rows for source→source and source→each target, and meta."""
    from .checkpoint import load_checkpoint

    ds_a = load_dataset(source)
    _check_titles(ds_a, source)
    ckpt_dir = cfg.checkpoint or train_source(cfg, source)
    ckpt = load_checkpoint(ckpt_dir, data=ds_a, device=_device(cfg))
    _check_checkpoint(ckpt, Path(ckpt_dir))
    seed = ckpt.config.get("seed", cfg.seed)
    ctx_a = make_context(ds_a, ckpt.config.get("indexing", "random"), seed, index=ckpt.index,
                         user_index=ckpt.user_index)
    mean_a = _train_mean(ctx_a)
    a = label(source)
    rows: list[dict] = []
    meta = {"checkpoint": str(ckpt_dir), "train_mean": mean_a, "data_hash": ds_a.data_hash, "tokenizer": {}}
    for tgt in [source] + list(targets):
        b = label(tgt)
        if tgt == source:
            ctx = ctx_a
        else:
            ds_b = load_dataset(tgt)
            _check_titles(ds_b, tgt)
            # B's own indexes, for rendering only: its ids mean nothing to A's model (module docstring)
            ctx = make_context(ds_b, "random", seed)
        direction = f"{a}{ARROW}{b}"
        got, cov = evaluate_direction(ckpt, Path(ckpt_dir), ctx, cfg, mean_a, direction)
        rows += got
        meta["tokenizer"][direction] = cov
        if cfg.baselines:
            ev = Evaluator(ckpt, ctx.ds, _eval_config(cfg, Path(ckpt_dir)), ctx=ctx, train_mean=mean_a)
            rows += baseline_rows(ctx, cfg, ev, mean_a, b, a, skip)
    return rows, meta


def transfer(cfg: TransferConfig) -> tuple[list[dict], dict]:
    """Every source against itself and the targets (in --pairs mode: every other dataset)."""
    if cfg.checkpoint is not None and len(cfg.sources) != 1:
        raise ConfigError("--checkpoint: give exactly one --source (the dataset it was trained on)")
    names = [label(p) for p in cfg.sources + cfg.targets]
    if len(set(names)) != len(set(Path(p).resolve() for p in cfg.sources + cfg.targets)):
        raise ConfigError(f"datasets must have distinct directory names (the table labels them by it): {names}")
    hashes = {}
    for p in dict.fromkeys(cfg.sources + cfg.targets):  # fail before any training
        ds = load_dataset(p)
        _check_titles(ds, p)
        hashes[label(p)] = ds.data_hash
    rows: list[dict] = []
    per_source, skip = {}, set()
    for src in cfg.sources:
        others = [t for t in cfg.targets if Path(t).resolve() != Path(src).resolve()]
        got, m = run_source(cfg, src, others, skip)
        rows += got
        per_source[label(src)] = m
    meta = {"split": cfg.split, "indexing": "source: checkpoint's; targets: random (rendering only)",
            "seed": cfg.seed, "templates": sorted({t for r in rows for t in r.get("template_ids", [])}),
            "data_hash": hashes,
            "sources": [str(p) for p in cfg.sources], "targets": [str(p) for p in cfg.targets],
            "per_source": per_source, "max_users": cfg.max_users, "device": M.device_name(_device(cfg)),
            "rating_fallback": "the source's training mean rating",
            "note": "target ids are rendered with the target's own indexes and mean nothing to the model"}
    return rows, meta


TRAIN_FLAGS = (("tasks", str, FAMILY, "families to train on (comma list; must include zeroshot)"),
               ("model", str, "t5-tiny", "backbone (see train.py --help)"),
               ("epochs", int, 1, "training epochs"), ("max_steps", int, -1, "stop after N steps (-1: all)"),
               ("train_batch_size", int, 32, "training batch size"), ("lr", float, 1e-3, "learning rate"),
               ("vocab_size", int, 8000, "SentencePiece text vocabulary size (T5 from scratch; id pieces on top)"),
               ("max_source_len", int, 384, "max prompt tokens (Z prompts list 25 titles)"),
               ("max_target_len", int, 64, "max target tokens"))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m p5x.transfer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, help="normalized dataset A (trained on)")
    ap.add_argument("--target", type=Path, action="append", default=[],
                    help="normalized dataset B (zero-shot); repeat for several")
    ap.add_argument("--pairs", help="comma list of datasets: each trained once, evaluated on every other")
    ap.add_argument("--out", type=Path, required=True, help="directory for metrics.json/.md (and checkpoints)")
    ap.add_argument("--checkpoint", type=Path, help="use this checkpoint (trained on --source) instead of training")
    g = ap.add_argument_group("training on the source (without --checkpoint)")
    for name, typ, default, help_ in TRAIN_FLAGS:
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=default, help=f"{help_} (default: {default})")
    ap.add_argument("--seed", type=int, default=0, help="seed for training, rendering and baselines")
    ap.add_argument("--split", default="test", choices=("test", "valid"), help="held-out part to score")
    ap.add_argument("--templates", default="seen,unseen", help="template groups: seen, unseen or both")
    ap.add_argument("--max-users", type=int, help="evaluate only the first N users (sorted ids) per dataset")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per evaluation batch")
    ap.add_argument("--no-baselines", action="store_true", help="skip the trivial baseline rows")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def config_from_args(args) -> TransferConfig:
    groups = tuple(g.strip() for g in args.templates.split(",") if g.strip())
    if not groups or any(g not in ("seen", "unseen") for g in groups):
        raise ConfigError(f"--templates: expected seen, unseen or seen,unseen, got {args.templates!r}")
    if args.pairs:
        if args.source or args.target:
            raise ConfigError("--pairs: give either --pairs or --source/--target, not both")
        paths = [Path(p.strip()) for p in args.pairs.split(",") if p.strip()]
        if len(paths) < 2:
            raise ConfigError("--pairs: needs at least two datasets")
        sources, targets = paths, paths
    else:
        if args.source is None or not args.target:
            raise ConfigError("--source and --target are required (or --pairs)")
        sources, targets = [args.source], list(args.target)
    train = {n: getattr(args, n) for n, *_ in TRAIN_FLAGS}
    train["batch_size"] = train.pop("train_batch_size")
    return TransferConfig(sources, targets, args.out, args.checkpoint, train, args.split, groups,
                          args.max_users, args.batch_size, not args.no_baselines, args.device,
                          not args.no_progress, args.seed)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        rows, meta = transfer(cfg)
        M.write_results(cfg.out / "metrics.json", rows, meta)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(M.format_table(rows), end="")
    print(f"\nwrote {cfg.out / 'metrics.json'} and {cfg.out / 'metrics.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
