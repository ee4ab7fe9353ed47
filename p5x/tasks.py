"""Prompt families: records of a split -> rendered `inputs`/`targets` rows (a datasets.Dataset).

Two steps, kept apart. A per-family *preprocessor* turns split records into samples: a template
kind plus a dict of field values (ids already written as text). *Rendering* then fills a template
of that kind with the fields; templates are data (templates/*.json), so nothing here branches on
template ids.

Leakage rules (docs/DESIGN.md, "Evaluation protocol" 2). Training prompts read only split.train:
histories, targets, rating/explanation/review records and candidate positives. Validation prompts
see train as history, test prompts train + validation. Candidate lists hold the positive and up to
99 items the user never interacted with in any part, in a shuffled order; validation/test lists are
drawn from a per-user generator seeded by (seed, part, user), so they are the same in every render.
Histories are the last HISTORY_LEN items.

Training mixture (`part="train"`), re-drawn each epoch from (seed, epoch), as P5 sampled it: per user,
sequential 5 next-item + 5 candidate + 10 yes/no prompts (half positive, half negative), direct
10 yes/no + 5 candidate prompts; rating, explanation and review one prompt per training record.
Each sample's template is drawn among the selected templates of its kind. Evaluation parts give
one row per evaluated user per template (yes/no kinds: a positive and a negative row).

Rows carry one column beyond the CONTRIBUTING.md contract: `kind` (the template's kind: next,
candidates, yesno, rating, rating_check, like, explain*, summary, review_rating, next_text,
preference), which tells evaluation how to score a row. A user's training negatives for one epoch
are drawn in one block, so the candidate lists of one user-epoch do not share negatives.

Extra families: `zeroshot` (items described by title, brand, categories
and price instead of ids; its next-item kind lists TEXT_CANDIDATES candidates by title) and
`preference` (TALLRec: the titles of the user's recent liked and disliked items, time order, like =
rating > 3, a target title, answer "yes"/"no" in lowercase like every p5x yes/no kind, since
scoring reads the logits of those two answer tokens; PREFERENCE_HISTORY items, 5 random cuts of each
training sequence per epoch). `all` = the applicable FAMILIES plus preference when the dataset has
ratings and titles.

Feature words (for explanation prompts; P5 had extracted explanation sentences, our sources do not):
an item's feature words are the FEATURE_WORDS words with the highest tf-idf over its title and its
TRAINING reviews (words: lowercase letters, 3+ characters, no stop words; idf across items), so
words every item's reviews share ("arrived") never count. The explanation of a review is its first
sentence holding one of the item's feature words, that word being {feature}; failing that, the first
sentence and its first content word.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from .errors import ConfigError, P5XError, close_matches
from .indexing import ItemIndex, build_index, build_user_index
from .paths import SAMPLE_DATA
from .schema import Dataset, Interaction
from .split import Split, time_split
from .templates import Family, Template, load_templates

FAMILIES = ("rating", "sequential", "direct", "explanation", "review")
EXTRA_FAMILIES = ("zeroshot", "preference")
PARTS = ("train", "valid", "test")
HISTORY_LEN = 20
# Ids in a list are separated by a space alone: every id is its own whitespace word (whole-word
# ids tell them apart) and its first piece is a level-0 token, so a comma would only cost one token
# per id (100 more in a candidate prompt) and tell the model nothing.
ID_SEP = " "
N_CANDIDATES = 100
TEXT_HISTORY_LEN = 5      # zero-shot prompts list items by title, so they keep fewer of them
TEXT_CANDIDATES = 20
FEATURE_WORDS = 5
PREFERENCE_HISTORY = 10   # TALLRec shows the 10 most recent rated items
# per user and epoch: how many training prompts of each kind (P5's sampling)
TRAIN_COUNTS = {
    "sequential": {"next": 5, "candidates": 5, "yesno": 10},
    "direct": {"yesno": 10, "candidates": 5},
    "zeroshot": {"next_text": 1},
    "preference": {"preference": 5},
}


def parse_kind_counts(spec: str) -> dict[str, dict[str, int]]:
    """TRAIN_COUNTS with the overrides of a "family.kind=N,..." string (N >= 0; 0 drops the kind).

    e.g. "sequential.next=15,sequential.yesno=0" trains three times as many next-item prompts per
    user and no sequential yes/no prompts. Only the per-user kinds above have counts; record kinds
    (rating, explanation, review) render one prompt per training interaction.
    """
    out = {f: dict(c) for f, c in TRAIN_COUNTS.items()}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, eq, n = part.partition("=")
        family, dot, kind = name.strip().partition(".")
        if not eq or not dot:
            raise ConfigError(f"--kind-counts: expected family.kind=N, got {part!r}")
        if family not in out:
            raise ConfigError(f"--kind-counts: {part!r}: family {family!r} has no per-user kinds; choose from "
                              + ", ".join(out) + close_matches(family, list(out)))
        if kind not in out[family]:
            raise ConfigError(f"--kind-counts: {part!r}: {family} has no kind {kind!r}; choose from "
                              + ", ".join(out[family]) + close_matches(kind, list(out[family])))
        try:
            count = int(n)
        except ValueError:
            count = -1
        if count < 0:
            raise ConfigError(f"--kind-counts: {part!r}: expected a whole number >= 0, got {n.strip()!r}")
        out[family][kind] = count
    return out


# dataset fields a family cannot do without
NEEDS = {"rating": ("rating",), "explanation": ("review",), "review": ("review",),
         "zeroshot": ("title",), "preference": ("rating", "title")}
STOP = frozenset("""the and for this that with was are but not you have has had its it's they them
their very just all too one can will would could from out more than then when what which who
been were also use used using get got really much like some any there here about after before
into only other our your his her she him been does did don't over such well even because""".split())


@dataclass
class TaskContext:
    """Everything rendering needs; derived lookups are cached on first use."""

    ds: Dataset
    split: Split
    index: ItemIndex
    user_index: ItemIndex
    templates: dict[str, Family]
    seed: int = 0
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    # training prompts per user, epoch and kind (TRAIN_COUNTS unless parse_kind_counts says otherwise)
    train_counts: dict = field(default_factory=lambda: parse_kind_counts(""))
    # training only: each item but the last of a sequential prompt's history is left out with this probability
    history_dropout: float = 0.0
    # a prompt's {history} id list shows at most the last history_len items (p5x.evaluate --history-len)
    history_len: int = HISTORY_LEN
    # training cuts of the sequential family: "user" (each user its kind counts) or "position" (the same
    # total, spread so that every cut of every training sequence is equally likely, as SASRec trains)
    cut_weighting: str = "user"


def make_context(ds: Dataset, index_method: str = "random", seed: int = 0,
                 index: ItemIndex | None = None, user_index: ItemIndex | None = None,
                 templates: dict[str, Family] | None = None) -> TaskContext:
    split = time_split(ds)
    index = index or build_index(ds, split, index_method, seed)
    user_index = user_index or build_user_index(ds, seed)
    return TaskContext(ds, split, index, user_index, templates or load_templates(), seed)


@dataclass
class Sample:
    kind: str
    fields: dict
    user_id: str
    item_id: str = ""
    candidates: list = field(default_factory=list)
    label: float | None = None
    template: Template | None = None   # set when the template was drawn before the fields


# ----------------------------------------------------------------------------------------------
# catalogue lookups, negatives and candidate lists


class Catalogue:
    """Item arrays and per-user interacted sets, computed once per context."""

    def __init__(self, ctx: TaskContext):
        # dataset order, not index order: candidate draws must not depend on the indexing method
        self.ids = [i for i in ctx.ds.items if i in ctx.index]
        self.pos = {iid: k for k, iid in enumerate(self.ids)}
        self.texts = [ctx.index.text(i) for i in self.ids]
        self.seen: dict[str, np.ndarray] = {}
        for u in ctx.split.train:
            items = ctx.split.user_items(u)
            self.seen[u] = np.fromiter((self.pos[i] for i in items), dtype=np.int64, count=len(items))

    def negatives(self, rng: np.random.Generator, user: str, k: int) -> list[int]:
        """Up to k distinct catalogue positions the user never interacted with, in random order."""
        seen = self.seen.get(user, np.empty(0, dtype=np.int64))
        n = len(self.ids)
        k = min(k, n - len(seen))
        if k <= 0:
            return []
        draw = rng.choice(n, size=min(n, k + len(seen)), replace=False)
        return draw[~np.isin(draw, seen)][:k].tolist()

    def available(self, user: str) -> int:
        return len(self.ids) - len(self.seen.get(user, ()))

    def join(self, positions: list[int], sep: str = ID_SEP) -> str:
        """Id texts of catalogue positions, each its own whitespace word (p5x.templates)."""
        return sep.join(itemgetter(*positions)(self.texts)) if len(positions) > 1 else \
            "".join(self.texts[p] for p in positions)

    def raw(self, positions: list[int]) -> list[str]:
        return list(itemgetter(*positions)(self.ids)) if len(positions) > 1 else \
            [self.ids[p] for p in positions]


class NegativePool:
    """A user's training negatives for one epoch, drawn in one block (one numpy call per user,
    not per prompt); lists within a user-epoch are then disjoint. Small catalogues draw per call."""

    def __init__(self, cat: Catalogue, rng: np.random.Generator, user: str, budget: int):
        self.cat, self.rng, self.user, self.at = cat, rng, user, 0
        self.block = cat.negatives(rng, user, budget) if cat.available(user) >= 2 * budget else None

    def take(self, k: int) -> list[int]:
        if self.block is not None and self.at + k <= len(self.block):
            self.at += k
            return self.block[self.at - k:self.at]
        return self.cat.negatives(self.rng, self.user, k)


def _cat(ctx: TaskContext) -> Catalogue:
    if "catalogue" not in ctx.cache:
        ctx.cache["catalogue"] = Catalogue(ctx)
    return ctx.cache["catalogue"]


def _user_rng(ctx: TaskContext, user: str, part: str, salt: int = 0) -> np.random.Generator:
    """A generator fixed by (seed, part, user): eval draws do not depend on what else is rendered."""
    return np.random.default_rng([ctx.seed, PARTS.index(part), zlib.crc32(user.encode()), salt])


def _with_positive(rng, negatives: list[int], positive: int) -> list[int]:
    out = list(negatives)
    out.insert(int(rng.integers(len(out) + 1)), positive)
    return out


def _candidate_positions(ctx, user, part, positive: str, rng=None, n=N_CANDIDATES,
                         negs: NegativePool | None = None) -> list[int]:
    """Positive + n-1 never-interacted items; for eval parts fixed by (seed, part, user)."""
    cat = _cat(ctx)
    if rng is None:
        key = ("candidates", user, part)
        if key not in ctx.cache:
            r = _user_rng(ctx, user, part)
            negs = cat.negatives(r, user, N_CANDIDATES - 1)
            ctx.cache[key] = (negs, int(r.integers(1 << 30)))
        negs, order_seed = ctx.cache[key]
        return _with_positive(np.random.default_rng(order_seed), negs[:n - 1], cat.pos[positive])
    return _with_positive(rng, negs.take(n - 1), cat.pos[positive])


def eval_candidates(ctx: TaskContext, user: str, part: str) -> list[str]:
    """The fixed candidate list (raw ids, positive included) of a user's held-out interaction.

    The same list every pick-from-candidates prompt of `part` shows, and the one the baselines rank.
    """
    positive = ctx.split.target(user, part).item_id
    return _cat(ctx).raw(_candidate_positions(ctx, user, part, positive))


def history_text(ctx: TaskContext, history: list[Interaction]) -> str:
    """The {history} field: the last ctx.history_len item ids (HISTORY_LEN unless set), oldest first."""
    cat = _cat(ctx)
    return cat.join([cat.pos[x.item_id] for x in history[-ctx.history_len:]])


def _eval_negative(ctx, user, part) -> str | None:
    """The fixed negative item of a user's evaluation yes/no rows."""
    cands = _candidate_positions(ctx, user, part, ctx.split.target(user, part).item_id)
    cat = _cat(ctx)
    pos = cat.pos[ctx.split.target(user, part).item_id]
    negs = [c for c in cands if c != pos]
    return cat.ids[negs[0]] if negs else None


# ----------------------------------------------------------------------------------------------
# field values


def fmt_rating(r: float) -> str:
    return f"{r:.1f}"


def _item_fields(ctx, iid: str) -> dict:
    it = ctx.ds.items[iid]
    return {"title": it.title or "unknown", "brand": it.brand or "unknown",
            "categories": ", ".join(it.categories) or "unknown",
            "price": "unknown" if it.price is None else f"{it.price:.2f}"}


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower()) if len(w) >= 3 and w not in STOP]


def feature_words(ctx: TaskContext) -> dict[str, list[str]]:
    """item -> its FEATURE_WORDS top tf-idf words over its title and training reviews."""
    if "features" in ctx.cache:
        return ctx.cache["features"]
    tf: dict[str, Counter] = {}
    for xs in ctx.split.train.values():
        for x in xs:
            if x.review:
                tf.setdefault(x.item_id, Counter()).update(_words(x.review))
    for iid, it in ctx.ds.items.items():
        if it.title:
            tf.setdefault(iid, Counter()).update(_words(it.title))
    df = Counter(w for c in tf.values() for w in c)
    n = len(tf)
    out = {}
    for iid, c in tf.items():
        scored = [(-cnt * math.log(n / df[w]), w) for w, cnt in c.items() if df[w] < n]
        out[iid] = [w for _, w in sorted(scored)[:FEATURE_WORDS]]
    ctx.cache["features"] = out
    return out


def explanation_of(review: str, features: list[str]) -> tuple[str, str] | None:
    """(sentence, feature word) drawn from a review, or None for an empty review."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", review.strip()) if s.strip()]
    if not sentences:
        return None
    for s in sentences:
        words = set(_words(s))
        for f in features:
            if f in words:
                return s, f
    first = _words(sentences[0])
    return sentences[0], (first[0] if first else (features[0] if features else "item"))


# ----------------------------------------------------------------------------------------------
# record kinds: one held-out or training interaction -> sample(s)


def _record_samples(ctx, family: str, kind: str, x: Interaction, part: str, rng) -> list[Sample]:
    """Samples of `kind` for one record; [] when the record lacks a field the kind needs.

    rng decides the positive/negative variant in training; evaluation yields both variants.
    """
    f = {"user": ctx.user_index.text(x.user_id), "item": ctx.index.text(x.item_id)}
    if family == "zeroshot":
        f.update(_item_fields(ctx, x.item_id))
    s = dict(user_id=x.user_id, item_id=x.item_id)
    has_rating = x.rating is not None
    if kind in ("rating", "review_rating", "explain_rating", "rating_check", "like") and not has_rating:
        return []
    if has_rating:
        f["rating"] = fmt_rating(x.rating)
    if kind in ("explain", "explain_feature", "explain_rating", "summary", "review_rating"):
        if not x.review or not x.review.strip():
            return []
        f["review"] = x.review.strip()
        picked = explanation_of(x.review, feature_words(ctx).get(x.item_id, []))
        if picked is None:
            return []
        f["explanation"], f["feature"] = picked
    if kind == "summary":
        if not x.summary or not x.summary.strip():
            return []
        f["summary"] = x.summary.strip()
    if kind in ("rating", "review_rating"):
        return [Sample(kind, f, label=x.rating, **s)]
    if kind == "like":
        like = x.rating > 3
        return [Sample(kind, {**f, "answer": "yes" if like else "no"}, label=float(like), **s)]
    if kind == "rating_check":
        r = _user_rng(ctx, x.user_id, part, 1) if part != "train" else rng
        wrong = [s_ for s_ in (1.0, 2.0, 3.0, 4.0, 5.0) if s_ != round(x.rating)]
        pos = Sample(kind, {**f, "star": fmt_rating(x.rating), "answer": "yes"}, label=1.0, **s)
        neg = Sample(kind, {**f, "star": fmt_rating(wrong[int(r.integers(len(wrong)))]),
                            "answer": "no"}, label=0.0, **s)
        if part != "train":
            return [pos, neg]
        return [pos if rng.random() < 0.5 else neg]
    return [Sample(kind, f, **s)]


# ----------------------------------------------------------------------------------------------
# user kinds: (history, target) of one user -> sample(s)


def _user_samples(ctx, family: str, kind: str, user: str, history: list[Interaction],
                  target: Interaction, part: str, rng, positive: bool | None = None,
                  negs: NegativePool | None = None) -> list[Sample]:
    """Samples of `kind`; rng and negs are None for evaluation parts (fixed candidates, both
    yes/no rows)."""
    cat = _cat(ctx)
    f = {"user": ctx.user_index.text(user)}
    if family != "direct":
        f["history"] = history_text(ctx, history)
    tid = target.item_id
    if kind == "next":
        return [Sample(kind, {**f, "item": ctx.index.text(tid)}, user, tid)]
    if kind == "candidates":
        cands = _candidate_positions(ctx, user, part, tid, rng, negs=negs)
        f.update(item=ctx.index.text(tid), candidates=cat.join(cands))
        return [Sample(kind, f, user, tid, cat.raw(cands))]
    if kind == "yesno":
        out = []
        if positive in (True, None):
            out.append(Sample(kind, {**f, "item": ctx.index.text(tid), "answer": "yes"}, user, tid,
                              label=1.0))
        if positive in (False, None):
            if negs is not None:
                got = negs.take(1)
                neg = cat.ids[got[0]] if got else None
            else:
                neg = _eval_negative(ctx, user, part)
            if neg is not None:
                out.append(Sample(kind, {**f, "item": ctx.index.text(neg), "answer": "no"}, user, neg,
                                  label=0.0))
        return out
    if kind == "next_text":
        cands = cat.raw(_candidate_positions(ctx, user, part, tid, rng, TEXT_CANDIDATES, negs))
        title = lambda i: ctx.ds.items[i].title or i  # noqa: E731
        f.update(history_text=" ; ".join(title(x.item_id) for x in history[-TEXT_HISTORY_LEN:]),
                 candidates_text=" ; ".join(title(c) for c in cands), title=title(tid))
        return [Sample(kind, f, user, tid, cands)]
    if kind == "preference":
        return _preference_sample(ctx, user, history, target)
    raise ConfigError(f"template kind {kind!r} is not known to family {family!r}")


def preference_window(history) -> list[Interaction]:
    """The rated interactions a preference prompt lists: the rated ones among the last
    PREFERENCE_HISTORY of the history, oldest first (p5x.fewshot's like-rate reads the same)."""
    return [x for x in history[-PREFERENCE_HISTORY:] if x.rating is not None]


def _preference_sample(ctx, user, history, target) -> list[Sample]:
    if target.rating is None or not history:
        return []
    title = lambda x: ctx.ds.items[x.item_id].title or x.item_id  # noqa: E731
    recent = preference_window(history)
    liked = " ; ".join(title(x) for x in recent if x.rating > 3) or "none"
    disliked = " ; ".join(title(x) for x in recent if x.rating <= 3) or "none"
    like = target.rating > 3
    f = {"user": ctx.user_index.text(user), "liked": liked, "disliked": disliked,
         "title": title(target), "answer": "yes" if like else "no"}
    return [Sample("preference", f, user, target.item_id, label=float(like))]


USER_KINDS = frozenset({"next", "candidates", "yesno", "next_text", "preference"})
RECORD_KINDS = frozenset({"rating", "rating_check", "like", "explain", "explain_feature",
                          "explain_rating", "summary", "review_rating"})


# ----------------------------------------------------------------------------------------------
# per-family preprocessing for each part


def drop_history(hist: list, p: float, rng: np.random.Generator) -> list:
    """The history with each item but the last left out with probability p, order kept.

    An augmentation of training prompts only: the most recent item, the strongest signal for the
    next one, always stays, so a prompt never loses its history altogether.
    """
    keep = rng.random(len(hist) - 1) >= p
    return [x for x, k in zip(hist[:-1], keep) if k] + [hist[-1]]


def position_count(expected: float, rng: np.random.Generator) -> int:
    """A whole count with the given expectation: its floor, plus one with the fraction's probability."""
    whole = int(expected)
    return whole + int(rng.random() < expected - whole)


def _train_user_samples(ctx, family, pool, rng, users) -> list[Sample]:
    out = []
    counts = {k: n for k, n in ctx.train_counts.get(family, {}).items() if k in pool and n > 0}
    if not counts:
        return out
    need = 1 if family in ("direct",) else 2
    per_list = {"candidates": N_CANDIDATES - 1, "next_text": TEXT_CANDIDATES - 1, "yesno": 1}
    cat = _cat(ctx)
    scale = None
    if family == "sequential" and ctx.cut_weighting == "position":
        cuts = [len(ctx.split.train[u]) - 1 for u in users if len(ctx.split.train[u]) >= need]
        scale = len(cuts) / max(1, sum(cuts))  # a user's prompts: its cuts x the mean prompts per cut
    for user in users:
        xs = ctx.split.train[user]
        if len(xs) < need:
            continue
        mine = counts if scale is None else \
            {kind: position_count(n * (len(xs) - 1) * scale, rng) for kind, n in counts.items()}
        # the user's negatives in one block, sized to the lists its own prompts will list
        negs = NegativePool(cat, rng, user, sum(n * per_list.get(k, 0) for k, n in mine.items()))
        for kind, n in mine.items():
            for k in range(n):
                if family == "direct":
                    hist, tgt = [], xs[int(rng.integers(len(xs)))]
                else:  # a random cut of the training sequence: the item after it is the target
                    j = int(rng.integers(1, len(xs)))
                    hist, tgt = xs[:j], xs[j]
                    if ctx.history_dropout and family == "sequential" and j > 1:
                        # thin what the prompt shows, not the items before its window
                        hist = drop_history(hist[-ctx.history_len:], ctx.history_dropout, rng)
                out += _user_samples(ctx, family, kind, user, hist, tgt, "train", rng,
                                     positive=(k % 2 == 0), negs=negs)
    return out


def _train_record_samples(ctx, family, pool, rng, users) -> list[Sample]:
    templates = [t for kind, ts in pool.items() if kind in RECORD_KINDS for t in ts]
    out = []
    if not templates:
        return out
    for user in users:
        for x in ctx.split.train[user]:
            # draw a template; if this record cannot fill its kind, try the others in random order
            for ti in rng.permutation(len(templates)):
                t = templates[ti]
                got = _record_samples(ctx, family, t.kind, x, "train", rng)
                if got:
                    for s in got:
                        s.template = t
                    out += got
                    break
    return out


def _eval_samples(ctx, family, pool, part, users) -> list[Sample]:
    out = []
    evaluated = set(ctx.split.eval_users(part))
    for user in [u for u in users if u in evaluated]:
        tgt = ctx.split.target(user, part)
        hist = ctx.split.history(user, part)
        for kind in pool:
            if kind in RECORD_KINDS:
                out += _record_samples(ctx, family, kind, tgt, part, None)
            else:
                out += _user_samples(ctx, family, kind, user, hist, tgt, part, None)
    return out


# ----------------------------------------------------------------------------------------------
# rendering


COLUMNS = ("inputs", "targets", "task", "template_id", "kind", "user_id", "item_id", "candidates",
           "label")


def _emit(rows: dict, family: str, samples: list[Sample], pool: dict, part: str, rng) -> None:
    for s in samples:
        if part == "train":
            ts = [s.template] if s.template is not None else \
                [pool[s.kind][int(rng.integers(len(pool[s.kind])))]]
        else:
            ts = pool[s.kind]
        for t in ts:
            inp, tgt = t.render(s.fields)
            for col, v in zip(COLUMNS, (inp, tgt, family, t.id, t.kind, s.user_id, s.item_id,
                                        s.candidates, s.label)):
                rows[col].append(v)


def _select(fam: Family, templates, part: str) -> dict[str, list[Template]]:
    if templates == "seen":
        chosen = fam.seen()
    elif templates == "unseen":
        chosen = fam.unseen()
    elif templates == "all":
        chosen = list(fam.templates)
    else:
        chosen = [t for t in fam.templates if t.id in set(templates)]
    if part == "train" and any(t.unseen for t in chosen):
        raise ConfigError(f"unseen templates are never trained on: "
                          f"{', '.join(t.id for t in chosen if t.unseen)}")
    pool: dict[str, list[Template]] = {}
    for t in chosen:
        if t.kind not in USER_KINDS | RECORD_KINDS:
            raise ConfigError(f"{fam.path}: template {t.id}: unknown kind {t.kind!r}")
        pool.setdefault(t.kind, []).append(t)
    return pool


def applicable(ctx: TaskContext, family: str) -> tuple[bool, str]:
    """Whether the dataset has what a family needs, and if not, why."""
    missing = [f for f in NEEDS.get(family, ()) if not ctx.ds.has(f)]
    if missing:
        return False, f"family {family!r} needs {' and '.join(missing)}, which dataset {ctx.ds.name!r} lacks"
    return True, ""


def resolve_families(ctx: TaskContext, families) -> list[str]:
    """'all' -> the applicable standard families (+ preference); explicit names must apply."""
    names = [families] if isinstance(families, str) else list(families)
    out: list[str] = []
    for name in names:
        if name == "all":
            out += [f for f in FAMILIES + ("preference",) if applicable(ctx, f)[0]
                    and f in ctx.templates and f not in out]
            continue
        if name not in FAMILIES + EXTRA_FAMILIES or name not in ctx.templates:
            known = [f for f in FAMILIES + EXTRA_FAMILIES if f in ctx.templates]
            raise ConfigError(f"unknown task family {name!r}; choose from all, {', '.join(known)}"
                              + close_matches(name, known))
        ok, why = applicable(ctx, name)
        if not ok:
            raise ConfigError(why)
        if name not in out:
            out.append(name)
    return out


def render(ctx: TaskContext, families, part: str, epoch: int = 0, templates="seen",
           users=None):
    """Rendered prompt rows for `families` ("all", a name, or a list) on one part of the split.

    templates: "seen" | "unseen" | "all" | a list of template ids. Returns a datasets.Dataset with
    columns inputs, targets, task, template_id, kind, user_id, item_id, candidates, label.
    users: render only these user ids (default: all); evaluation rows of a user do not depend on
    which other users are rendered.
    """
    import datasets

    if part not in PARTS:
        raise ConfigError(f"unknown part {part!r}; choose from {', '.join(PARTS)}")
    if not isinstance(templates, str):
        templates = list(templates)
        known = {t.id for fam in ctx.templates.values() for t in fam.templates}
        for tid in templates:
            if tid not in known:
                raise ConfigError(f"unknown template id {tid!r}" + close_matches(tid, known))
    elif templates not in ("seen", "unseen", "all"):
        raise ConfigError(f"templates must be seen, unseen, all or a list of ids, got {templates!r}")
    if users is None:
        users = sorted(ctx.split.train)
    else:
        unknown = [u for u in users if u not in ctx.split.train]
        if unknown:
            raise ConfigError(f"unknown user {unknown[0]!r} in dataset {ctx.ds.name!r}")
        users = sorted(set(users))
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    for fi, family in enumerate(resolve_families(ctx, families)):
        pool = _select(ctx.templates[family], templates, part)
        if not pool:
            continue
        if part == "train":
            rng = np.random.default_rng([ctx.seed, epoch, (FAMILIES + EXTRA_FAMILIES).index(family)])
            samples = _train_user_samples(ctx, family, pool, rng, users) + \
                _train_record_samples(ctx, family, pool, rng, users)
        else:
            rng = None
            samples = _eval_samples(ctx, family, pool, part, users)
        _emit(rows, family, samples, pool, part, rng)
    features = datasets.Features({
        **{c: datasets.Value("string") for c in COLUMNS if c not in ("candidates", "label")},
        "candidates": datasets.Sequence(datasets.Value("string")),
        "label": datasets.Value("float64")})
    # straight to Arrow: Dataset.from_dict re-encodes every row in Python (2-3x slower here)
    from datasets.table import InMemoryTable
    import pyarrow as pa

    table = pa.Table.from_pydict(rows, schema=features.arrow_schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features))


# ----------------------------------------------------------------------------------------------
# CLI


def _show(args) -> None:
    from .schema import load_dataset

    ds = load_dataset(args.data)
    ctx = make_context(ds, args.index, args.seed)
    if args.kind_counts:
        ctx.train_counts = parse_kind_counts(args.kind_counts)
    templates = args.templates if args.templates in ("seen", "unseen", "all") else args.templates.split(",")
    users = sorted(ctx.split.train)
    if args.users:  # a seeded subset keeps `show` quick on large datasets
        pick = np.random.default_rng(args.seed).permutation(len(users))[:args.users]
        users = [users[i] for i in sorted(pick)]
    rows = render(ctx, args.task, args.part, epoch=args.epoch, templates=templates, users=users)
    print(f"# {len(rows)} rows ({args.task}, {args.part}, {args.index} indexing)")
    order = np.random.default_rng(args.seed).permutation(len(rows))[:args.n] if args.shuffle \
        else range(min(args.n, len(rows)))
    for i in order:
        r = rows[int(i)]
        print(f"[{r['template_id']}] user={r['user_id']} item={r['item_id']} label={r['label']}")
        print(f"  input : {r['inputs']}")
        print(f"  target: {r['targets']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m p5x.tasks", description="Render prompt families.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print rendered samples of a family on a normalized dataset")
    s.add_argument("--data", default=str(SAMPLE_DATA),
                   help="normalized dataset directory (see p5x.schema; default: the bundled sample)")
    s.add_argument("--task", default="all", help="family name or 'all' (default: all)")
    s.add_argument("-n", type=int, default=5, help="how many rows to print (default: 5)")
    s.add_argument("--part", default="train", choices=PARTS, help="split part (default: train)")
    s.add_argument("--index", default="random", help="item indexing: random, sequential, collaborative, atomic")
    s.add_argument("--templates", default="seen", help="seen, unseen, all, or comma-separated ids")
    s.add_argument("--kind-counts", default="",
                   help="training prompts per user of a kind, as train.py --kind-counts (e.g. sequential.next=15)")
    s.add_argument("--epoch", type=int, default=0, help="training epoch (re-draws the mixture)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shuffle", action="store_true", help="print a random selection of rows")
    s.add_argument("--users", type=int, default=200,
                   help="render for this many randomly chosen users (0: all; default: 200)")
    args = p.parse_args(argv)
    try:
        _show(args)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
