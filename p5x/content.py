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
import torch
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


def similarity_table(prior: ContentPrior, chunk: int = 2048) -> np.ndarray:
    """[items, items] float16: cos(i, j) of the prior's vectors, 0 on the diagonal (no item is its own
    neighbour), so row h summed over a history's last items, decay-weighted, is ContentPrior.scores.
    Built a block of rows at a time (a sparse product per block, densified)."""
    n = len(prior.items)
    out = np.empty((n, n), dtype=np.float16)
    xt = prior.vectors.T.tocsc()
    for s in range(0, n, chunk):
        out[s:s + chunk] = (prior.vectors[s:s + chunk] @ xt).toarray()
    np.fill_diagonal(out, 0)
    return out


# the largest catalogue whose items x items float16 table training holds (32,768 items: 2 GiB)
MAX_TABLE_ITEMS = 32_768


class AnswerPrior(torch.nn.Module):
    """Training with the prior (train.py --content-prior W): W x the prior of each next-item prompt,
    added to the answer step's item logits before the loss, the same bonus p5x's search adds when
    ranking. The model then learns what the prior leaves to learn, and is ranked with it.

    The history is read from the prompt itself: its item tokens in order (a next-item prompt lists
    the history oldest first, and nothing else that is an item), the last `items_back` of them
    weighted decay ** j, newest first, through `similarity_table`. Its tables are buffers that are not
    saved (a checkpoint records the weight; the prior is rebuilt from the item texts).
    """

    def __init__(self, prior: ContentPrior, token_ids: Sequence[int], weight: float):
        super().__init__()
        n = len(prior.items)
        if len(token_ids) != n:
            raise ValueError(f"AnswerPrior: {len(token_ids)} item tokens for {n} items")
        if n > MAX_TABLE_ITEMS:
            from .errors import ConfigError
            raise ConfigError(f"--content-prior: training holds an items x items table; {n} items are more than "
                              f"its {MAX_TABLE_ITEMS} (rank with the prior after training instead: p5x.evaluate "
                              f"--content-prior)")
        self.weight, self.items_back, self.decay = float(weight), prior.items_back, prior.decay
        cols = torch.as_tensor(list(token_ids), dtype=torch.long)
        row_of = torch.full((int(cols.max()) + 1,), -1, dtype=torch.long)
        row_of[cols] = torch.arange(n)
        self.register_buffer("table", torch.from_numpy(similarity_table(prior)), persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("row_of", row_of, persistent=False)

    def item_scores(self, input_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[B, items] float32: the prior of each prompt's history (zeros for rows not flagged in `rows`)."""
        ids = input_ids.long()
        r = torch.where(ids < self.row_of.numel(), self.row_of[ids.clamp(max=self.row_of.numel() - 1)], -1)
        is_item = (r >= 0) & rows.to(torch.bool)[:, None]
        back = is_item.flip(1).cumsum(1).flip(1)  # at an item token: how many item tokens from it on (1: newest)
        out = torch.zeros(ids.shape[0], self.table.shape[0], dtype=torch.float32, device=ids.device)
        for j in range(self.items_back):
            at = is_item & (back == j + 1)
            has = at.any(1)
            row = r.gather(1, at.to(torch.int8).argmax(1, keepdim=True))[:, 0].clamp(min=0)
            out += self.table[row].float() * (self.decay ** j * has.float())[:, None]
        return out

    def forward(self, input_ids: torch.Tensor, rows: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """[B, vocab_size] float32: W x item_scores at the item tokens, 0 elsewhere."""
        bias = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.float32, device=input_ids.device)
        bias[:, self.cols] = self.weight * self.item_scores(input_ids, rows)
        return bias


def prior_settings(weight: float | None, items_back: int | None, decay: float | None,
                   config: dict) -> tuple[float, int, float]:
    """(weight, items_back, decay) for ranking a checkpoint: each given value as it is, each None the one
    the checkpoint was trained with (its p5x_config.json "content_prior", train.py --content-prior), else
    0 (no prior), 3 and 0.5."""
    rec = config.get("content_prior") or {}
    return (float(rec.get("weight", 0.0)) if weight is None else float(weight),
            int(rec.get("items_back", 3)) if items_back is None else int(items_back),
            float(rec.get("decay", 0.5)) if decay is None else float(decay))


def check_prior_settings(weight: float | None, items_back: int | None = None, decay: float | None = None) -> None:
    """One-line ConfigError for a bad --content-prior / --content-items / --content-decay (None: not given)."""
    from .errors import ConfigError

    if (weight is not None and not (weight >= 0 and weight != float("inf"))) or (items_back is not None and items_back < 1) or \
            (decay is not None and not 0 < decay <= 1):
        raise ConfigError("--content-prior must be >= 0, --content-items >= 1 and --content-decay in (0, 1], "
                          f"got {weight}, {items_back}, {decay}")
