"""Popularity on the test split under each reasonable protocol variant, to place DESIGN.md's row.

    python bench/beauty/popularity_variants.py DIR      # DIR: a normalized dataset (data_prep output)

Varies where the counts come from (train / train+valid / every part) and whether each user's
history is removed from the ranking; ties are broken by catalogue order. Prints HR@5, NDCG@5,
HR@10 and NDCG@10 over every test user. p5x.baselines' own row is "train, keep".
"""

from __future__ import annotations

import argparse

import numpy as np

from p5x.schema import load_dataset
from p5x.split import time_split


def counts(split, pos, parts) -> np.ndarray:
    c = np.zeros(len(pos))
    for part in parts:
        if part == "train":
            for xs in split.train.values():
                for x in xs:
                    c[pos[x.item_id]] += 1
        else:
            for x in getattr(split, part).values():
                c[pos[x.item_id]] += 1
    return c


def metrics(split, pos, users, targets, c, exclude: bool) -> dict[str, float]:
    order = np.argsort(-(c - np.arange(len(c)) * 1e-9), kind="stable")[:200]
    hr5 = hr10 = n5 = n10 = 0.0
    for user, t in zip(users, targets):
        top = list(order)
        if exclude:
            seen = {pos[x.item_id] for x in split.history(user, "test")}
            top = [i for i in top if i not in seen]
        top = top[:10]
        if t in top:
            r = top.index(t)
            hr10, n10 = hr10 + 1, n10 + 1 / np.log2(r + 2)
            if r < 5:
                hr5, n5 = hr5 + 1, n5 + 1 / np.log2(r + 2)
    n = len(users)
    return {"HR@5": hr5 / n, "NDCG@5": n5 / n, "HR@10": hr10 / n, "NDCG@10": n10 / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="normalized dataset directory")
    a = ap.parse_args()
    ds = load_dataset(a.data)
    split = time_split(ds)
    pos = {iid: k for k, iid in enumerate(ds.items)}
    users = split.eval_users("test")
    targets = [pos[split.target(u, "test").item_id] for u in users]
    print("| counts from | history | HR@5 | NDCG@5 | HR@10 | NDCG@10 |\n|---|---|---|---|---|---|")
    for parts in (["train"], ["train", "valid"], ["train", "valid", "test"]):
        c = counts(split, pos, parts)
        for exclude in (False, True):
            m = metrics(split, pos, users, targets, c, exclude)
            print(f"| {'+'.join(parts)} | {'removed' if exclude else 'keep'} | "
                  + " | ".join(f"{v:.4f}" for v in m.values()) + " |")


if __name__ == "__main__":
    main()
