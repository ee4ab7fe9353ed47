"""Evaluate one checkpoint on every family, seen and unseen templates apart, next to baselines.

    python -m p5x.evaluate --checkpoint runs/default --tasks all --split test

Protocol (docs/DESIGN.md): the split is the one the model trained on (same data hash, or refused).

- sequential next-item: full ranking over the whole catalogue by trie-constrained beam search
  (beam 20): HR@5/10/20, NDCG@5/10/20, and the share of returned beams that were not items; with
  `--exclude-history` the search runs over the catalogue minus the user's history (the same
  whole history before the held-out item), baselines likewise, and the protocol says so;
- pick-from-candidates kinds (sequential, direct): the 100 fixed candidates ranked by where each
  appears among the constrained beams (absent ones last, in candidate order), labelled "sampled";
- yes/no kinds: AUC over the positive and negative rows, and (direct, sequential) the 100
  candidates ranked by P(yes), labelled "sampled";
- rating kinds: RMSE/MAE over every record; an output that does not parse as a number is counted
  and scored as the training mean, never dropped;
- explanation: BLEU-4, ROUGE-1/2/L; review summaries: ROUGE, BLEU-2; review ratings: RMSE/MAE;
- next_text (zeroshot): each row's 20 candidates ranked by log P(title | prompt), labelled
  "sampled"; `title_ties` is the share of rows whose target shares its title with another candidate
  (tied scores keep the shuffled candidate order).

Rows are pooled over the templates of each (family, kind, seen/unseen) group; metrics.json also
keeps each template's own numbers. Baseline rows (p5x.baselines) join the same table.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from .content import check_prior_settings, prior_settings
from .errors import ConfigError, P5XError, close_matches
from .inference import (build_item_trie, check_prior_supported, generate_text, rank_items, target_logprob,
                        yes_probability)
from .schema import load_dataset
from .tasks import HISTORY_LEN, history_text, make_context, render, resolve_families
from .templates import Template

SEQ_KS = (5, 10, 20)
SAMPLED_KS, SAMPLED_NDCG_KS = (1, 5, 10), (5, 10)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class EvalConfig:
    """Options of `python -m p5x.evaluate` (see --help)."""

    checkpoint: Path
    data: Path | None = None
    tasks: str = "all"
    split: str = "test"
    templates: tuple[str, ...] = ("seen", "unseen")
    beams: int = 20
    batch_size: int = 16
    max_users: int | None = None
    baselines: bool = True
    baseline_epochs: int = 50
    out: Path | None = None
    device: str = "auto"
    progress: bool = True
    template_ids: tuple[str, ...] = ()   # keep only these templates inside each group (empty: all)
    per_kind: int = 1                    # evaluate the first N templates of each kind per group (0: all)
    exclude_history: bool = False        # full ranking leaves out the items each user already has
    by_history: bool = False             # next-item ranking also reported per history-length group
    history_len: int = 0                 # prompts show at most the last N history items (0: as trained)
    # > 0: next-item ranking also with this weight x p5x.content's prior; None (here and below): as the
    # checkpoint was trained (train.py --content-prior), else 0 (resolved by evaluate(); Evaluator reads None as 0)
    content_prior: float | None = None
    content_items: int | None = None     # the prior's history items (newest first; None: trained or 3)
    content_decay: float | None = None   # their weights: decay ** j (None: trained or 0.5)


def parse_number(text: str) -> float | None:
    m = _NUMBER.search(text)
    return float(m.group()) if m else None


def _rating_metrics(preds: list[str], labels, fallback: float) -> dict:
    vals = [parse_number(p) for p in preds]
    bad = sum(v is None for v in vals)
    vals = [fallback if v is None else min(5.0, max(1.0, v)) for v in vals]
    return {"RMSE": M.rmse(vals, labels), "MAE": M.mae(vals, labels), "unparsable": bad, "n": len(vals)}


def _rank_by_beams(beams: list[str], candidates: list[str]) -> list[str]:
    """Candidates in the order the model's constrained beams name them; the rest after, in list order."""
    cset = set(candidates)
    first = [b for b in beams if b in cset]
    rest = [c for c in candidates if c not in set(first)]
    return first + rest


class Evaluator:
    """Holds a checkpoint, the task context and the item trie; one method per template kind.

    ctx / train_mean override the defaults (the checkpoint's own dataset and indexes, its training
    mean rating): p5x.transfer renders another dataset with that dataset's own indexes.
    """

    def __init__(self, ckpt, ds, cfg: EvalConfig, ctx=None, train_mean: float | None = None):
        # prior settings left None: no prior, 3 items, 0.5 (evaluate() fills in the checkpoint's own first)
        cfg = replace(cfg, **_prior_fields(cfg, {}))
        self.ckpt, self.ds, self.cfg = ckpt, ds, cfg
        self.ctx = ctx or make_context(ds, ckpt.config.get("indexing", "random"), ckpt.config.get("seed", 0),
                                       index=ckpt.index, user_index=ckpt.user_index)
        if not 0 <= cfg.history_len <= HISTORY_LEN:
            raise ConfigError(f"--history-len: expected 1-{HISTORY_LEN} (training shows {HISTORY_LEN}; 0: as "
                              f"in training), got {cfg.history_len}")
        if cfg.history_len:  # a copy: a context handed in (p5x.transfer shares one) stays as it was
            self.ctx = replace(self.ctx, history_len=cfg.history_len)
        self.trie = build_item_trie(ckpt)
        if cfg.content_prior:  # refused before any ranking, not after the plain pass
            check_prior_supported(ckpt, self.trie)
        ratings = [x.rating for xs in self.ctx.split.train.values() for x in xs if x.rating is not None]
        self.train_mean = train_mean if train_mean is not None else \
            (float(np.mean(ratings)) if ratings else 3.0)

    # -- kinds ---------------------------------------------------------------------------------
    def next_items(self, rows) -> list[tuple]:
        """[(protocol, metrics)] of full ranking, then (protocol, metrics, users) per history group;
        with --content-prior the same again, ranked with the prior added."""
        exclude = None
        histories = [self.ctx.split.history_ids(u, self.cfg.split) for u in rows["user_id"]]
        if self.cfg.exclude_history:
            exclude = histories
        protocol = "full ranking" + (" (history excluded)" if self.cfg.exclude_history else "")
        trained = (self.ckpt.config.get("content_prior") or {}).get("weight")
        res = []
        for prior in [None] + ([self.content_prior()] if self.cfg.content_prior else []):
            ranked, invalid = rank_items(self.ckpt, rows["inputs"], self.trie, self.cfg.beams,
                                         self.cfg.batch_size, desc="sequential", progress=self.cfg.progress,
                                         exclude=exclude,
                                         prior=None if prior is None else (prior, histories, self.cfg.content_prior))
            out = M.ranking_metrics(ranked, rows["item_id"], SEQ_KS)
            out["invalid"] = invalid / max(1, len(rows["inputs"]) * min(self.cfg.beams, self.trie.num_items))
            if prior is None:  # a model trained with the prior, ranked without it, says so
                label = protocol + (f", model alone (trained with {_fmt(trained)} x content prior)" if trained else "")
            else:
                label = protocol + f" + {_fmt(self.cfg.content_prior)} x content prior " \
                    f"({self.cfg.content_items} items back, decay {_fmt(self.cfg.content_decay)})"
            res.append((label, out))
            if self.cfg.by_history:  # metrics over the group's prompts; its label counts users, as the baselines' do
                groups = [M.history_group(len(h)) for h in histories]
                users: dict[str, set] = defaultdict(set)
                for u, g in zip(rows["user_id"], groups):
                    users[g].add(u)
                res += [(M.history_groups_protocol(label, g, len(users[g])), m, n) for g, n, m in
                        M.ranking_metrics_by_group(ranked, rows["item_id"], groups, SEQ_KS, order=M.HISTORY_LABELS)]
        return res

    def content_prior(self):
        """p5x.content's prior over the catalogue, built once (TF-IDF of the item texts)."""
        if getattr(self, "_content", None) is None:
            from .content import ContentPrior

            self._content = ContentPrior(self.ds, list(self.ckpt.index.codes), self.cfg.content_items,
                                         self.cfg.content_decay)
        return self._content

    def candidates_by_generation(self, rows) -> dict:
        # the answer is one of the prompt's candidates: the search runs over them alone
        ranked, _ = rank_items(self.ckpt, rows["inputs"], self.trie, self.cfg.beams, self.cfg.batch_size,
                               desc="candidates", progress=self.cfg.progress, allow=rows["candidates"])
        ranked = [_rank_by_beams(r, c) for r, c in zip(ranked, rows["candidates"])]
        return M.ranking_metrics(ranked, rows["item_id"], SAMPLED_KS, SAMPLED_NDCG_KS)

    def yes_no(self, rows) -> dict:
        p = yes_probability(self.ckpt, rows["inputs"], desc="yes/no", progress=self.cfg.progress)
        labels = np.asarray(rows["label"], dtype=float)
        both = 0 < labels.sum() < len(labels)  # a group can hold one class only (e.g. all "yes")
        return {"AUC": M.auc(labels, p) if both else float("nan"),
                "accuracy": float(((p > 0.5) == (labels > 0.5)).mean()), "n": len(labels)}

    def candidates_by_yes_no(self, family: str, template: Template) -> tuple[str, dict]:
        """Score each user's fixed candidates (100, fewer on a small catalogue) with a yes/no
        template; rank by P(yes). Returns (protocol label, metrics)."""
        cand_rows = render(self.ctx, [family], self.cfg.split,
                           templates=[self._first_of_kind(family, "candidates")], users=self.users())
        prompts, owners = [], []
        for k, (user, cands) in enumerate(zip(cand_rows["user_id"], cand_rows["candidates"])):
            fields = {"user": self.ctx.user_index.text(user), "answer": "yes"}
            if "{history}" in template.input:
                fields["history"] = history_text(self.ctx, self.ctx.split.history(user, self.cfg.split))
            for c in cands:
                prompts.append(template.render({**fields, "item": self.ctx.index.text(c)})[0])
                owners.append(k)
        p = yes_probability(self.ckpt, prompts, desc="yes/no ranking", progress=self.cfg.progress)
        ranked, at = [], 0
        for cands in cand_rows["candidates"]:
            sc = p[at:at + len(cands)]
            at += len(cands)
            ranked.append([cands[j] for j in np.argsort(-sc, kind="stable")])
        return (f"sampled {_one_of(cand_rows['candidates'])}, yes/no scoring",
                M.ranking_metrics(ranked, cand_rows["item_id"], SAMPLED_KS, SAMPLED_NDCG_KS))

    def next_text(self, rows) -> dict:
        """Rank each row's candidates (raw ids) by the log-probability of their titles as the answer."""
        title = lambda i: self.ctx.ds.items[i].title or i  # noqa: E731  (as p5x.tasks renders them)
        prompts, texts = [], []
        for inp, cands in zip(rows["inputs"], rows["candidates"]):
            prompts += [inp] * len(cands)
            texts += [title(c) for c in cands]
        score = target_logprob(self.ckpt, prompts, texts, self.cfg.batch_size * 4, desc="title scores",
                               progress=self.cfg.progress)
        ranked, at, ties = [], 0, 0
        for cands, tgt in zip(rows["candidates"], rows["item_id"]):
            sc = score[at:at + len(cands)]
            at += len(cands)
            ranked.append([cands[j] for j in np.argsort(-sc, kind="stable")])
            ties += sum(title(c) == title(tgt) for c in cands) > 1
        out = M.ranking_metrics(ranked, rows["item_id"], SAMPLED_KS, SAMPLED_NDCG_KS)
        out["title_ties"] = ties / max(1, len(ranked))
        return out

    def ratings(self, rows) -> dict:
        preds = generate_text(self.ckpt, rows["inputs"], 8, self.cfg.batch_size, desc="rating",
                              progress=self.cfg.progress)
        labels = [parse_number(t) for t in rows["targets"]]
        return _rating_metrics(preds, labels, self.train_mean)

    def texts(self, rows, bleu) -> dict:
        preds = generate_text(self.ckpt, rows["inputs"], self.ckpt.config.get("max_target_len", 64),
                              self.cfg.batch_size, desc="text", progress=self.cfg.progress)
        refs = list(rows["targets"])
        return {bleu.__name__.upper().replace("BLEU", "BLEU-"): bleu(preds, refs), **M.rouge(preds, refs)}

    # -- plumbing ------------------------------------------------------------------------------
    def _first_of_kind(self, family: str, kind: str) -> str:
        return next(t.id for t in self.ctx.templates[family].templates if t.kind == kind and not t.unseen)

    def users(self) -> list[str] | None:
        """The evaluated users: all of the part, or the first --max-users of them (sorted ids)."""
        if self.cfg.max_users is None:
            return None
        return self.ctx.split.eval_users(self.cfg.split, self.cfg.max_users)

    def template_ids(self, family: str, group: str) -> list[str]:
        """The group's templates, cut to --template-ids and to the first --per-kind of each kind."""
        fam = self.ctx.templates[family]
        ts = fam.seen() if group == "seen" else fam.unseen()
        if self.cfg.template_ids:
            ts = [t for t in ts if t.id in set(self.cfg.template_ids)]
        if self.cfg.per_kind:
            count: dict[str, int] = defaultdict(int)
            kept = []
            for t in ts:
                if count[t.kind] < self.cfg.per_kind:
                    kept.append(t)
                    count[t.kind] += 1
            ts = kept
        return [t.id for t in ts]

    def family(self, family: str, group: str) -> list[dict]:
        tids = self.template_ids(family, group)
        if not tids:
            return []
        rows = render(self.ctx, [family], self.cfg.split, templates=tids, users=self.users())
        if len(rows) == 0:
            return []
        by_kind: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(rows["kind"]):
            by_kind[k].append(i)
        out = []
        for kind, idx in by_kind.items():
            sub = rows.select(idx)
            tids = sorted(set(sub["template_id"]))
            t0 = time.perf_counter()
            res = self.kind(family, kind, sub)
            sec = time.perf_counter() - t0  # wall time of the whole kind (every protocol it reports)
            cut = self.cfg.history_len and any("{history}" in t.input for t in self.ctx.templates[family].templates
                                               if t.id in tids)
            for protocol, metrics, *n in res:  # a history group's row counts its own prompts
                if cut:
                    protocol += f", prompts show the last {self.cfg.history_len} history item(s)"
                out.append({"model": f"p5x ({self.ckpt.config.get('backbone', '?')})",
                            "task": f"{family}/{kind}", "protocol": protocol, "templates": group,
                            "metrics": metrics, "template_ids": tids, "n": n[0] if n else len(sub),
                            "seconds": round(sec, 3), "ms_per_row": round(1000 * sec / max(1, len(sub)), 3)})
        return out

    def kind(self, family: str, kind: str, rows) -> list[tuple]:
        """[(protocol, metrics)] or, for a history group's row, (protocol, metrics, prompts)."""
        if kind == "next":
            return self.next_items(rows)
        if kind == "candidates":
            return [(f"sampled {_one_of(rows['candidates'])}, generation among them",
                     self.candidates_by_generation(rows))]
        if kind in ("yesno", "like", "rating_check", "preference"):
            res = [("yes/no rows", self.yes_no(rows))]
            if kind == "yesno" and family in ("direct", "sequential"):
                t = next(t for t in self.ctx.templates[family].templates if t.id == rows["template_id"][0])
                res.append(self.candidates_by_yes_no(family, t))
            return res
        if kind in ("rating", "review_rating"):
            return [("all records", self.ratings(rows))]
        if kind in ("explain", "explain_feature", "explain_rating"):
            return [("all records", self.texts(rows, M.bleu4))]
        if kind == "summary":
            return [("all records", self.texts(rows, M.bleu2))]
        if kind == "next_text":
            return [(f"sampled {_one_of(rows['candidates'])}, title log-prob", self.next_text(rows))]
        return []


def _prior_fields(cfg: EvalConfig, config: dict) -> dict:
    """cfg's content-prior fields with each None filled in by p5x.content.prior_settings."""
    keys = ("content_prior", "content_items", "content_decay")
    return dict(zip(keys, prior_settings(*(getattr(cfg, k) for k in keys), config)))


def _fmt(x: float) -> str:
    return f"{x:g}"


def _one_of(candidate_lists) -> str:
    """'1-of-100' (or '1-of-40..100' where a small catalogue leaves some users fewer negatives)."""
    sizes = {len(c) for c in candidate_lists}
    lo, hi = min(sizes, default=0), max(sizes, default=0)
    return f"1-of-{hi}" if lo == hi else f"1-of-{lo}..{hi}"


WARMUP_PROMPTS = 16


def warm_up(ev: Evaluator) -> float:
    """Seconds of one throwaway ranking batch, run before the timed scoring.

    A GPU's first batch pays one-time costs (library handles, kernel loading, allocator growth) that
    would otherwise land in `model_eval_seconds`, which bench/beauty/oneshot.py divides by a few
    hundred users to plan the time a full evaluation needs. The output is discarded."""
    t0 = time.perf_counter()
    n = min(ev.cfg.batch_size, WARMUP_PROMPTS)
    rank_items(ev.ckpt, ["warm up"] * n, ev.trie, ev.cfg.beams, n, progress=False)  # (lists: the device is done)
    return time.perf_counter() - t0


def evaluate(cfg: EvalConfig) -> tuple[list[dict], dict]:
    from .checkpoint import load_checkpoint, read_config

    config = read_config(cfg.checkpoint)
    cfg = replace(cfg, **_prior_fields(cfg, config))
    recorded = config.get("train_config", {}).get("data")
    data = cfg.data or (Path(recorded) if recorded else None)
    if data is None:
        raise ConfigError("--data: the checkpoint does not record its dataset; pass --data DIR")
    ds = load_dataset(data)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_checkpoint(cfg.checkpoint, data=ds, device=device)
    ev = Evaluator(ckpt, ds, cfg)
    known = {t.id for fam in ev.ctx.templates.values() for t in fam.templates}
    for tid in cfg.template_ids:
        if tid not in known:
            raise ConfigError(f"--template-ids: unknown template {tid!r}{close_matches(tid, known)}")
    families = resolve_families(ev.ctx, cfg.tasks.split(","))
    warmup_seconds = warm_up(ev)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for family in families:
        for group in cfg.templates:
            rows += ev.family(family, group)
    model_seconds = time.perf_counter() - t0
    if cfg.baselines:
        from .baselines import BaselineConfig, run_baselines

        tasks = tuple(t for t in ("sequential", "direct", "rating") if t in families)
        if tasks:
            rows += run_baselines(ds, BaselineConfig(part=cfg.split, tasks=tasks, seed=config.get("seed", 0),
                                                     epochs=cfg.baseline_epochs, device=device,
                                                     progress=cfg.progress, max_users=cfg.max_users,
                                                     exclude_history=cfg.exclude_history,
                                                     by_history=cfg.by_history))
    meta = {"split": cfg.split, "indexing": config.get("indexing"), "seed": config.get("seed"),
            "templates": sorted({t for r in rows for t in r.get("template_ids", [])}),
            "data_hash": ds.data_hash, "data": str(Path(data).resolve()), "checkpoint": str(cfg.checkpoint),
            "model": config.get("backbone"), "device": M.device_name(device), "max_users": cfg.max_users,
            "beams": cfg.beams, "per_kind": cfg.per_kind, "template_ids_kept": list(cfg.template_ids) or None,
            "exclude_history": cfg.exclude_history, "by_history": cfg.by_history,
            "history_len": cfg.history_len or None,
            "content_prior": {"weight": cfg.content_prior, "items_back": cfg.content_items,
                              "decay": cfg.content_decay} if cfg.content_prior else None,
            "content_prior_trained": config.get("content_prior"),
            "model_eval_seconds": round(model_seconds, 3), "model_warmup_seconds": round(warmup_seconds, 3)}
    return rows, meta


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m p5x.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/default"), help="checkpoint directory")
    ap.add_argument("--data", type=Path, help="normalized dataset (default: the one the checkpoint records)")
    ap.add_argument("--tasks", default="all", help="'all' or a comma list of families")
    ap.add_argument("--split", default="test", choices=("test", "valid"), help="held-out part to score")
    ap.add_argument("--templates", default="seen,unseen", help="template groups: seen, unseen or both")
    ap.add_argument("--beams", type=int, default=20, help="beam size for item generation (full ranking)")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch")
    ap.add_argument("--max-users", type=int, help="evaluate only the first N users (sorted ids) per family")
    ap.add_argument("--template-ids", default="", help="comma list: keep only these template ids inside the "
                    "chosen groups (e.g. sequential-1,sequential-13: one seen and one unseen prompt)")
    ap.add_argument("--per-kind", type=int, default=1, help="templates evaluated per kind and group: the first "
                    "N seen (and N unseen) of each kind, pooled; 0 = every template (slow: each is a full pass)")
    ap.add_argument("--exclude-history", action="store_true", help="sequential full ranking leaves out the "
                    "items each user already has (baseline rows too; labelled in the table). Default: every item "
                    "is ranked, as in the published anchors")
    ap.add_argument("--by-history", action="store_true", help="sequential full ranking is also reported for "
                    "the users of each history length apart (0, 1-3, 4-5, 6-10, 11-20, 21+ items; baseline rows "
                    "too), the row's n saying how many users a group holds")
    ap.add_argument("--history-len", type=int, default=0, help="prompts' id histories show at most the last N "
                    "items (1-20; 0: as in training, the last 20): a probe of how much of the history the model "
                    "uses; rows of prompts with an id history say so in their protocol (title and preference "
                    "prompts keep theirs)")
    ap.add_argument("--content-prior", type=float, help="> 0: next-item full ranking is also "
                    "reported ranked by log P(item) + this weight x a content prior, the TF-IDF similarity of each "
                    "item's title, brand and categories to the user's latest items (p5x.content; a row of its own, "
                    "labelled; one-token ids, --index atomic, only). On Beauty 6 was chosen on validation "
                    "(bench/RESULTS.md, session 35); 0: off. Default: the weight the checkpoint was trained with "
                    "(train.py --content-prior), else 0")
    ap.add_argument("--content-items", type=int, help="the content prior's history items, newest first "
                    "(default: as trained, else 3)")
    ap.add_argument("--content-decay", type=float, help="the content prior's weight of the j-th "
                    "newest history item: decay ** j (default: as trained, else 0.5)")
    ap.add_argument("--no-baselines", action="store_true", help="skip the same-split baseline rows")
    ap.add_argument("--baseline-epochs", type=int, default=50, help="SASRec epochs for the baseline rows")
    ap.add_argument("--out", type=Path, help="directory for metrics.json/metrics.md (default CKPT/eval)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    groups = tuple(g.strip() for g in args.templates.split(",") if g.strip())
    try:
        if not groups or any(g not in ("seen", "unseen") for g in groups):
            raise ConfigError(f"--templates: expected seen, unseen or seen,unseen, got {args.templates!r}")
        if args.beams < 1 or args.batch_size < 1 or args.per_kind < 0:
            raise ConfigError("--beams and --batch-size must be positive, --per-kind not negative")
        check_prior_settings(args.content_prior, args.content_items, args.content_decay)
        cfg = EvalConfig(args.checkpoint, args.data, args.tasks, args.split, groups, args.beams,
                         args.batch_size, args.max_users, not args.no_baselines, args.baseline_epochs,
                         args.out, args.device, not args.no_progress,
                         tuple(t.strip() for t in args.template_ids.split(",") if t.strip()), args.per_kind,
                         args.exclude_history, args.by_history, args.history_len, args.content_prior,
                         args.content_items, args.content_decay)
        rows, meta = evaluate(cfg)
        out = args.out or (args.checkpoint / "eval")
        M.write_results(out / "metrics.json", rows, meta)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(M.format_table(rows), end="")
    print(f"\nwrote {out / 'metrics.json'} and {out / 'metrics.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
