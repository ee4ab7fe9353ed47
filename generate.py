"""Ask one p5x checkpoint anything: next items, ratings, yes/no, best candidate, explanations, summaries.

    python generate.py --checkpoint runs/default --task sequential --user U --top-k 10
    python generate.py --task rating --user U --item I
    python generate.py --task direct --user U --item I               # P(yes)
    python generate.py --task direct --user U --candidates I1,I2,I3  # best of the list
    python generate.py --task explanation --user U --item I [--feature WORD]
    python generate.py --task review --text "..." [--user U] [--item I]
    python generate.py --task sequential --split test --output preds.jsonl   # every test user

Users and items are the dataset's raw ids. A single query's history is everything the dataset holds
for the user. Output is readable text; --json prints JSON lines.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from p5x.errors import ConfigError, DataError, P5XError, close_matches

TASKS = ("sequential", "rating", "direct", "explanation", "review")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="generate.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/default"), help="checkpoint directory")
    ap.add_argument("--data", type=Path, help="normalized dataset (default: the one the checkpoint records)")
    ap.add_argument("--task", required=True, choices=TASKS, help="what to ask")
    ap.add_argument("--user", help="raw user id")
    ap.add_argument("--item", help="raw item id")
    ap.add_argument("--candidates", help="comma-separated raw item ids (direct: pick the best; ranked by P(yes), "
                    "or by generation among them with a candidates --template such as direct-5)")
    ap.add_argument("--feature", help="explanation: a feature word to talk about")
    ap.add_argument("--text", help="review: the review text to summarise and rate")
    ap.add_argument("--template", help="template id (default: the first seen template of the right kind)")
    ap.add_argument("--top-k", type=int, default=10, help="sequential: how many items to return")
    ap.add_argument("--exclude-seen", action="store_true", help="sequential: recommend only items the user does "
                    "not have yet (the search skips them, so --top-k items still come back)")
    ap.add_argument("--content-prior", type=float, help="sequential, one-token ids (--index atomic): "
                    "rank by log P(item) + this weight x the TF-IDF similarity of the items' titles, brands and "
                    "categories to the user's last 3 items (p5x.content; 6 on Beauty, chosen on validation); 0: off. "
                    "Default: the weight the checkpoint was trained with (train.py --content-prior), else 0")
    ap.add_argument("--split", choices=("valid", "test"), help="batch mode: every user of this held-out part")
    ap.add_argument("--output", type=Path, help="batch mode: write JSON lines here (atomically)")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    ap.add_argument("--beams", type=int, default=20, help="beam size for item generation")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return ap


class Session:
    """A loaded checkpoint plus its dataset, split, indexes and templates."""

    def __init__(self, args):
        import torch

        from p5x.checkpoint import load_checkpoint, read_config
        from p5x.schema import load_dataset
        from p5x.tasks import make_context

        config = read_config(args.checkpoint)
        data = args.data or config.get("train_config", {}).get("data")
        if not data:
            raise ConfigError("--data: the checkpoint does not record its dataset; pass --data DIR")
        self.ds = load_dataset(data)
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.ckpt = load_checkpoint(args.checkpoint, data=self.ds, device=device)
        self.ctx = make_context(self.ds, config.get("indexing", "random"), config.get("seed", 0),
                                index=self.ckpt.index, user_index=self.ckpt.user_index)
        self.args = args

    @functools.cached_property
    def trie(self):
        """The item trie, built only for questions that generate items (sequential, a candidates pick)."""
        from p5x.inference import build_item_trie

        return build_item_trie(self.ckpt)

    # -- ids -----------------------------------------------------------------------------------
    def user(self, raw):
        if raw is None:
            raise ConfigError(f"--task {self.args.task} needs --user")
        if raw not in self.ckpt.user_index:
            raise DataError(f"unknown user {raw!r}{close_matches(raw, self.ckpt.user_index.codes)}",
                            field="--user")
        return raw

    def item(self, raw, flag="--item"):
        if raw is None:
            raise ConfigError(f"--task {self.args.task} needs {flag}")
        if raw not in self.ckpt.index:
            raise DataError(f"unknown item {raw!r}{close_matches(raw, self.ckpt.index.codes)}", field=flag)
        return raw

    def history(self, user):
        xs = self.ds.by_user().get(user, [])
        if not xs:
            raise DataError(f"user {user!r} has no interactions: no history to recommend from",
                            field="--user")
        return xs

    def template(self, family, kinds):
        fam = self.ctx.templates[family]
        if self.args.template:
            t = fam.by_id.get(self.args.template)
            if t is None or t.kind not in kinds:
                ok = [t.id for t in fam.templates if t.kind in kinds]
                raise ConfigError(f"--template {self.args.template!r} is not a {'/'.join(kinds)} template "
                                  f"of {family}; choose from {', '.join(ok)}")
            return t
        return next(t for t in fam.templates if t.kind in kinds and not t.unseen)

    def prior(self, histories):
        """rank_items' `prior` for these histories under --content-prior (the checkpoint's own weight when
        the flag is left out; None when that is 0)."""
        from p5x.content import prior_settings

        weight, items_back, decay = prior_settings(self.args.content_prior, None, None, self.ckpt.config)
        if weight <= 0:
            return None
        if getattr(self, "_content", None) is None:
            from p5x.content import ContentPrior
            from p5x.inference import check_prior_supported

            check_prior_supported(self.ckpt, self.trie)
            self._content = ContentPrior(self.ds, list(self.ckpt.index.codes), items_back, decay)
        return self._content, histories, weight

    def title(self, iid):
        return self.ds.items[iid].title or ""

    # -- questions ------------------------------------------------------------------------------
    def fields(self, user=None, item=None, history=None):
        from p5x.tasks import history_text

        # targets are rendered too but never used here: absent target fields render empty
        f = defaultdict(str, {"user": self.ckpt.user_index.text(user) if user else "someone",
             "item": self.ckpt.index.text(item) if item else "", "answer": "yes", "rating": "5.0",
             "star": "5"})
        if history is not None:
            f["history"] = history_text(self.ctx, history)
        return f

    def sequential(self, user):
        from p5x.inference import rank_items

        hist = self.history(user)
        t = self.template("sequential", ("next",))
        prompt = t.render(self.fields(user, history=hist))[0]
        exclude = [{x.item_id for x in hist}] if self.args.exclude_seen else None
        ranked, _ = rank_items(self.ckpt, [prompt], self.trie, max(self.args.beams, self.args.top_k),
                               progress=False, exclude=exclude, prior=self.prior([[x.item_id for x in hist]]))
        items = ranked[0][: self.args.top_k]
        return {"task": "sequential", "user": user, "template": t.id,
                "items": [{"item": i, "title": self.title(i)} for i in items]}

    def rating(self, user, item):
        from p5x.evaluate import parse_number
        from p5x.inference import generate_text

        t = self.template("rating", ("rating",))
        text = generate_text(self.ckpt, [t.render(self.fields(user, item))[0]], 8, progress=False)[0]
        return {"task": "rating", "user": user, "item": item, "title": self.title(item),
                "rating": parse_number(text), "output": text, "template": t.id}

    def direct(self, user, item=None, candidates=None):
        from p5x.inference import yes_probability

        t = self.template("direct", ("yesno", "candidates") if candidates else ("yesno",))
        if t.kind == "candidates":
            return self.pick(user, candidates, t)
        items = candidates or [item]
        p = yes_probability(self.ckpt, [t.render(self.fields(user, i))[0] for i in items], progress=False)
        scored = sorted(zip(items, p.tolist()), key=lambda x: -x[1])
        out = {"task": "direct", "user": user, "template": t.id,
               "scores": [{"item": i, "title": self.title(i), "p_yes": round(s, 4)} for i, s in scored]}
        if candidates:
            out["best"] = scored[0][0]
        return out

    def pick(self, user, candidates, t):
        """A pick-from-candidates template: the beam search runs over the listed items alone, and
        they come back in the order it ranks them (the ones it did not reach after, as listed)."""
        from p5x.evaluate import _rank_by_beams
        from p5x.inference import rank_items
        from p5x.tasks import ID_SEP

        f = self.fields(user)
        f["candidates"] = ID_SEP.join(self.ckpt.index.text(c) for c in candidates)
        beams = min(len(set(candidates)), self.args.beams)
        ranked, _ = rank_items(self.ckpt, [t.render(f)[0]], self.trie, beams, progress=False,
                               allow=[candidates])
        order = _rank_by_beams(ranked[0], list(dict.fromkeys(candidates)))
        return {"task": "direct", "user": user, "template": t.id, "best": order[0],
                "ranked": [{"item": i, "title": self.title(i)} for i in order]}

    def explanation(self, user, item, feature=None):
        from p5x.inference import generate_text

        t = self.template("explanation", ("explain_feature",) if feature else ("explain",))
        f = self.fields(user, item)
        f["feature"] = feature or ""
        text = generate_text(self.ckpt, [t.render(f)[0]], self.ckpt.config.get("max_target_len", 64),
                             progress=False)[0]
        return {"task": "explanation", "user": user, "item": item, "title": self.title(item),
                "explanation": text, "template": t.id}

    def review(self, text, user=None, item=None):
        from p5x.evaluate import parse_number
        from p5x.inference import generate_text

        if not text or not text.strip():
            raise ConfigError("--task review needs --text with the review")
        f = self.fields(user, item)
        f["review"] = text.strip()
        ts = self.template("review", ("summary",))
        tr = next(t for t in self.ctx.templates["review"].templates if t.kind == "review_rating" and not t.unseen)
        summary, rating = generate_text(self.ckpt, [ts.render(f)[0], tr.render(f)[0]],
                                        self.ckpt.config.get("max_target_len", 64), progress=False)
        return {"task": "review", "summary": summary, "rating": parse_number(rating), "output_rating": rating}

    def ask(self):
        a = self.args
        if a.task == "sequential":
            return self.sequential(self.user(a.user))
        if a.task == "rating":
            return self.rating(self.user(a.user), self.item(a.item))
        if a.task == "direct":
            if a.candidates:
                cands = [self.item(c.strip(), "--candidates") for c in a.candidates.split(",") if c.strip()]
                return self.direct(self.user(a.user), candidates=cands)
            return self.direct(self.user(a.user), self.item(a.item))
        if a.task == "explanation":
            return self.explanation(self.user(a.user), self.item(a.item), a.feature)
        return self.review(a.text, self.user(a.user) if a.user else None, self.item(a.item) if a.item else None)


def batch(session, args) -> list[dict]:
    """Every user of a held-out part: the rendered test prompts of the task, answered in batches."""
    from p5x.evaluate import EvalConfig, Evaluator
    from p5x.inference import generate_text, rank_items, yes_probability
    from p5x.tasks import render

    t = session.template(args.task, {"sequential": ("next",), "rating": ("rating",), "direct": ("yesno",),
                                     "explanation": ("explain",), "review": ("summary",)}[args.task])
    rows = render(session.ctx, [args.task], args.split, templates=[t.id])
    if args.task == "sequential":
        hist = [session.ctx.split.history_ids(u, args.split) for u in rows["user_id"]]
        exclude = hist if args.exclude_seen else None
        ranked, _ = rank_items(session.ckpt, rows["inputs"], session.trie, max(args.beams, args.top_k),
                               desc="users", exclude=exclude, prior=session.prior(hist))
        outs = [{"items": r[: args.top_k]} for r in ranked]
    elif args.task == "direct":
        outs = [{"p_yes": float(p)} for p in yes_probability(session.ckpt, rows["inputs"], desc="prompts")]
    else:
        outs = [{"output": o} for o in generate_text(session.ckpt, rows["inputs"], desc="prompts")]
    return [{"user": u, "item": i, "target": tgt, "template": t.id, **o}
            for u, i, tgt, o in zip(rows["user_id"], rows["item_id"], rows["targets"], outs)]


def _write_jsonl(path: Path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _print(result: dict) -> None:
    if result["task"] == "sequential":
        print(f"next items for user {result['user']} (template {result['template']}):")
        for k, it in enumerate(result["items"], 1):
            print(f"{k:3d}. {it['item']}  {it['title']}")
    elif result["task"] == "direct" and "ranked" in result:  # generated among the candidates
        print(f"candidates for user {result['user']}, as generated (template {result['template']}):")
        for k, it in enumerate(result["ranked"], 1):
            print(f"{k:3d}. {it['item']}  {it['title']}")
    elif result["task"] == "direct":
        for s in result["scores"]:
            print(f"P(yes) = {s['p_yes']:.3f}  {s['item']}  {s['title']}")
        if "best" in result:
            print(f"best: {result['best']}")
    elif result["task"] == "rating":
        print(f"predicted rating of {result['item']} ({result['title']}) by {result['user']}: "
              f"{result['rating']}  [raw output: {result['output']!r}]")
    elif result["task"] == "explanation":
        print(result["explanation"])
    else:
        print(f"summary: {result['summary']}\nrating: {result['rating']}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.top_k < 1 or args.beams < 1:
            raise ConfigError("--top-k and --beams must be positive")
        from p5x.content import check_prior_settings

        check_prior_settings(args.content_prior)
        if args.output and not args.split:
            raise ConfigError("--output is for batch mode: add --split test (or valid)")
        if args.split and args.task == "review" and args.text:
            raise ConfigError("--text is for a single review; batch mode reads the held-out reviews")
        session = Session(args)
        if args.split:
            records = batch(session, args)
            if args.output:
                _write_jsonl(args.output, records)
                print(f"wrote {len(records)} predictions to {args.output}", file=sys.stderr)
            else:
                for r in records:
                    print(json.dumps(r, ensure_ascii=False))
            return 0
        result = session.ask()
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
