"""A content prior for next-item ranking: the catalogue's items most alike in text to a user's latest ones.

Each item's text is its title, brand and categories (a category every described item has, such as a
store's root, is left out: it tells no two items apart). Texts become TF-IDF vectors (words and word pairs,
sublinear term counts, terms in at least two items, rows of unit length) fitted on the catalogue's
texts alone: no interaction, and so nothing of a held-out part, reaches them.

For a history h_1 .. h_m the prior of item i is

    sum over j = 0 .. k-1 of decay**j * cos(h_{m-j}, i)

over the last k history items, newest first, where an item is not its own neighbour (its
similarity to itself counts 0; another history item may still be alike to it). Items without any
text have no neighbours. `p5x.evaluate --content-prior BETA` ranks by the model's log-probability
plus BETA times this prior; `p5x.baselines --models content` ranks by the prior alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import sparse

from .schema import Dataset


def item_texts(ds: Dataset, items: Sequence[str]) -> list[str]:
    """Title, brand and the categories that set items apart, one string per item ('' when none)."""
    rows = [ds.items.get(i) for i in items]
    cats = Counter(c for it in rows if it is not None for c in set(it.categories or []))
    described = sum(it is not None for it in rows)
    everywhere = {c for c, n in cats.items() if n == described} if described > 1 else set()
    out = []
    for it in rows:
        if it is None:
            out.append("")
            continue
        parts = [it.title or "", it.brand or ""] + [c for c in (it.categories or []) if c not in everywhere]
        out.append(" ".join(p for p in parts if p))
    return out


class ContentPrior:
    """Text similarity of every catalogue item to a history's last `items_back` items (module doc)."""

    def __init__(self, ds: Dataset, items: Sequence[str], items_back: int = 3, decay: float = 0.5):
        if items_back < 1 or not 0 < decay <= 1:
            raise ValueError(f"content prior: items_back must be >= 1 and decay in (0, 1], got {items_back}, {decay}")
        self.items, self.items_back, self.decay = list(items), items_back, decay
        self.pos = {i: k for k, i in enumerate(self.items)}
        texts = item_texts(ds, self.items)
        self.vectors = _tfidf(texts)  # [items, terms], unit rows (zero rows for items without text)
        # an item's similarity to itself: 1 with text, 0 without
        self._self = np.asarray(self.vectors.multiply(self.vectors).sum(1)).ravel().astype(np.float32)

    def scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """[len(histories), len(items)] float32; a history's items unknown to the catalogue are skipped."""
        n = len(histories)
        rows, cols, vals = [], [], []
        for r, h in enumerate(histories):
            known = [self.pos[x] for x in h if x in self.pos][-self.items_back:][::-1]
            for j, c in enumerate(known):
                rows.append(r)
                cols.append(c)
                vals.append(self.decay ** j)
        q = sparse.csr_matrix((np.asarray(vals, dtype=np.float32), (rows, cols)), shape=(n, len(self.items)))
        # (q X) X^T with the middle product dense: a sparse-times-dense product, far faster than sparse x sparse
        out = np.ascontiguousarray((self.vectors @ (q @ self.vectors).toarray().T).T, dtype=np.float32)
        # no item is its own neighbour: take back each query item's similarity to itself
        np.subtract.at(out, (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)),
                       np.asarray(vals, dtype=np.float32) * self._self[np.asarray(cols, dtype=np.int64)])
        return out


def _tfidf(texts: list[str]) -> sparse.csr_matrix:
    from sklearn.feature_extraction.text import TfidfVectorizer

    if sum(bool(t.strip()) for t in texts) < 2:  # fewer than two items with text: no neighbours at all
        return sparse.csr_matrix((len(texts), 1), dtype=np.float32)
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2), dtype=np.float32)
    try:
        return vec.fit_transform(texts).tocsr()
    except ValueError:  # no term in two items' texts
        return sparse.csr_matrix((len(texts), 1), dtype=np.float32)
