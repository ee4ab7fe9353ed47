"""Hand-made training rows for the model/training tests (independent of p5x.tasks).

Sequential prompts "user U bought A B C , next ?" -> the item after C in the user's training
history, and yes/no direct prompts, over the toy dataset's planted cycles.
"""

from __future__ import annotations

import datasets

from p5x.indexing import build_index, build_user_index
from p5x.split import time_split


def rows_for(ds, epoch: int = 0, seed: int = 0, max_hist: int = 4) -> list[dict]:
    split = time_split(ds)
    index, users = build_index(ds, split, seed=seed), build_user_index(ds, seed=seed)
    rows = []
    for u, xs in split.train.items():
        for t in range(1, len(xs)):
            hist = " ".join(index.text(x.item_id) for x in xs[max(0, t - max_hist):t])
            rows.append({"inputs": f"user {users.text(u)} bought {hist} , what next ?",
                         "targets": index.text(xs[t].item_id), "task": "sequential"})
            other = xs[(t + epoch) % len(xs)].item_id
            rows.append({"inputs": f"does user {users.text(u)} like {index.text(other)} ?",
                         "targets": "yes" if (t + epoch) % 2 else "no", "task": "direct"})
    return rows, index, users


def make_rows(ds, cfg):
    """The make_rows hook of p5x.training.train: every epoch's rows, concatenated in order."""
    parts = []
    for e in range(cfg.epochs):
        rows, index, users = rows_for(ds, epoch=e, seed=cfg.seed)
        parts.append(datasets.Dataset.from_list(rows).shuffle(seed=cfg.seed + e))
    return index, users, datasets.concatenate_datasets(parts).flatten_indices()
