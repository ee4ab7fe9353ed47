"""Diagnostic: does a checkpoint's next-item ranking depend on the user's history?

Ranks the first N test users' next item with the checkpoint (beam search over real item ids, the
p5x.evaluate protocol) and reports how many distinct items its top-1 and top-k lists hold, how
many of the list slots fall in the training set's 100 most popular items, how often a list
repeats an item of the user's own history, and how often its top-1 is one (the last history item in
particular; `p5x.evaluate --exclude-history` ranks without them). A model that ignores the history gives every user
(nearly) the same list.

    python bench/prediction_diversity.py --checkpoint RUN --data DIR [--users 500] [--template sequential-1]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a p5x training output directory")
    ap.add_argument("--data", required=True, help="the normalized dataset it was trained on")
    ap.add_argument("--users", type=int, default=500, help="first N test users by sorted id")
    ap.add_argument("--template", default="sequential-1", help="sequential template id")
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from p5x.baselines import popularity_counts
    from p5x.checkpoint import load_checkpoint
    from p5x.errors import P5XError
    from p5x.evaluate import EvalConfig, Evaluator
    from p5x.inference import rank_items
    from p5x.schema import load_dataset
    from p5x.tasks import render

    try:
        if args.users < 1:
            raise P5XError(f"--users: expected >= 1, got {args.users}")
        ds = load_dataset(args.data)
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        ck = load_checkpoint(args.checkpoint, data=args.data, device=device)
        ev = Evaluator(ck, ds, EvalConfig(args.checkpoint, max_users=args.users))
        users = ev.users()
        rows = render(ev.ctx, ["sequential"], "test", templates=[args.template], users=users)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ranked, _ = rank_items(ck, rows["inputs"], ev.trie, args.beams, args.batch_size, progress=False)
    items = list(ds.items)
    counts = popularity_counts(ev.ctx.split, items)
    top100 = {items[j] for j in np.argsort(-counts, kind="stable")[:100]}
    top1 = collections.Counter(r[0] for r in ranked)
    slots = [i for r in ranked for i in r]
    by_user = dict(zip(rows["user_id"], ranked))
    ordered = {u: ev.ctx.split.history_ids(u, "test") for u in by_user}
    hist = {u: set(h) for u, h in ordered.items()}
    last = {u: h[-1] for u, h in ordered.items() if h}
    res = {"users": len(ranked), "beams": args.beams, "template": args.template,
           "distinct_top1": len(top1), "most_common_top1_share": round(top1.most_common(1)[0][1] / len(ranked), 4),
           f"distinct_in_top{args.beams}": len(set(slots)),
           "share_of_slots_in_100_most_popular": round(sum(i in top100 for i in slots) / len(slots), 4),
           "share_of_slots_from_own_history": round(float(np.mean([len(set(r) & hist[u]) / len(r)
                                                                    for u, r in by_user.items()])), 4),
           # a top slot spent on what the user already has (Beauty: no test item is in its user's history)
           "share_top1_from_own_history": round(float(np.mean([r[0] in hist[u] for u, r in by_user.items()])), 4),
           "share_top1_is_last_history_item": round(float(np.mean([r[0] == last.get(u) for u, r in by_user.items()])), 4)}
    print(json.dumps(res, indent=1))
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
