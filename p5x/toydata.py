"""A small synthetic normalized dataset with a planted, learnable signal, for tests and smoke runs.

`make_toy_dataset(out_dir)` writes a dataset (see p5x.schema) in which every family has something
a tiny model can pick up within ~100 steps:

- sequential / direct: the catalogue is cut into `n_groups` cycles; each user starts somewhere on
  one cycle and walks it, so the next item is always the successor of the last one;
- rating: every item in group g gets the same star rating (GROUP_RATINGS);
- explanation / review: each item has a feature word that its reviews mention, and the wording of
  the review and summary follows the rating.

Raw item ids are shuffled labels ("item_017"), so no id numbering hides the cycle order.
Everything is drawn from `seed`: the same arguments always write byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .schema import Dataset, Interaction, Item, write_dataset

GROUP_NAMES = ("Skin Care", "Hair Care", "Makeup", "Fragrance", "Nails", "Bath")
GROUP_BRANDS = ("Lumina", "Corvo", "Petalux", "Aurem", "Nexa", "Brisa")
GROUP_RATINGS = (5.0, 4.0, 2.0, 1.0, 3.0, 5.0)
FEATURES = ("scent", "texture", "bottle", "color", "price", "shine", "formula", "brush",
            "finish", "cap", "lather", "pump", "tint", "glow", "smell", "size", "shade", "feel")
NOUNS = ("cream", "serum", "lotion", "balm", "gel", "oil", "mist", "polish", "soap", "mask")
PRAISE = {5.0: "wonderful", 4.0: "good", 3.0: "okay", 2.0: "poor", 1.0: "terrible"}
VERDICT = {5.0: "I would buy it again.", 4.0: "I would probably buy it again.",
           3.0: "It does the job.", 2.0: "I would not buy it again.",
           1.0: "I returned it."}


def _items(n_items: int, n_groups: int, rng: np.random.Generator):
    """Items and the cycles (lists of raw ids, in walking order) they sit on."""
    labels = rng.permutation(n_items)  # raw ids carry no information about cycle position
    items, cycles = [], [[] for _ in range(n_groups)]
    for k in range(n_items):
        g, pos = k % n_groups, k // n_groups
        iid = f"item_{labels[k]:03d}"
        feature = FEATURES[(pos + 3 * g) % len(FEATURES)]
        noun = NOUNS[(pos + g) % len(NOUNS)]
        title = f"{GROUP_BRANDS[g]} {feature} {noun} no. {pos + 1}"
        price = round(5.0 + 4.0 * g + 0.5 * pos, 2)
        items.append(Item(iid, title, GROUP_BRANDS[g], ["Beauty", GROUP_NAMES[g]], price,
                          f"A {noun} known for its {feature}."))
        cycles[g].append(iid)
    return items, cycles


def make_toy_dataset(out_dir: str | Path, n_users: int = 40, n_items: int = 60, seed: int = 0,
                     n_groups: int = 4) -> Dataset:
    """Write the toy dataset to `out_dir` (replacing it) and return it as a p5x.schema.Dataset."""
    # each cycle needs >= 12 items so that a walk of 5-12 steps never revisits an item
    n_groups = max(1, min(n_groups, len(GROUP_NAMES), n_items // 12))
    rng = np.random.default_rng(seed)
    items, cycles = _items(n_items, n_groups, rng)
    by_id = {it.item_id: it for it in items}
    group_of = {iid: g for g, cyc in enumerate(cycles) for iid in cyc}
    inters = []
    for u in range(n_users):
        uid = f"user_{u:03d}"
        g = int(rng.integers(n_groups))
        cyc = cycles[g]
        start = int(rng.integers(len(cyc)))
        length = int(rng.integers(5, 13))
        length = min(length, len(cyc))  # a walk never revisits an item
        t0 = 1_500_000_000 + int(rng.integers(0, 10_000_000))
        for step in range(length):
            iid = cyc[(start + step) % len(cyc)]
            rating = GROUP_RATINGS[group_of[iid]]
            feature = by_id[iid].title.split()[1]
            review = (f"The {feature} of this one is {PRAISE[rating]}. {VERDICT[rating]} "
                      f"Arrived on time.")
            summary = f"{PRAISE[rating].capitalize()} {feature}"
            inters.append(Interaction(uid, iid, rating, t0 + step * 86_400, review, summary))
    return write_dataset(out_dir, "toy", "synthetic", items, inters,
                         source=f"p5x.toydata(seed={seed})")
