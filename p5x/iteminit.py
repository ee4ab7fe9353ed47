"""Item-token embeddings initialised from the training histories (`train.py --item-init cooc`).

With atomic ids every item is one token with an embedding row of its own, and a from-scratch model
learns each row only from the few prompts that mention its item: on Beauty (12,101 items) a t5-tiny
given nothing but the last item of each history still ranks by popularity after two passes over
the next-item targets (bench/RESULTS.md, session 11). The shared weights, which every prompt
trains, learn fast; the per-item rows are the slow part.

`cooc` starts those rows from the top eigenvectors of the item co-occurrence matrix of the training
histories: entry (a, b) is log(1 + the number of times a and b stand next to each other in a
user's training sequence, either order). Items that follow one another get nearby vectors before
the first step, and the model only has to learn to route the last item to the output. Only
`Split.train` is read, so a user's validation and test items never shape an embedding.

Rows of items with no training neighbour keep the backbone's random initialisation; the new rows
are scaled to the embedding table's own standard deviation, so a pretrained table keeps its scale.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ConfigError
from .split import Split

METHODS = ("random", "cooc")
MAX_RANK = 128  # eigenpairs computed at most; wider tables get zeros beyond (Beauty: 2.6 s at 128, 47 s at 512)


def cooccurrence_matrix(split: Split, items: list[str]):
    """Symmetric scipy CSR [n, n]: log(1 + how often a and b stand next to each other, either order)
    over the training histories; zero diagonal (back-to-back repeats say nothing about neighbours)."""
    from .baselines import transition_counts

    t = transition_counts(split, items)
    m = (t + t.T).tocsr()
    m.setdiag(0)
    m.eliminate_zeros()
    m.data = np.log1p(m.data)
    return m


def cooccurrence_vectors(split: Split, items: list[str], dim: int, seed: int = 0) -> np.ndarray:
    """[len(items), dim] float32: U * sqrt(L) for the `dim` largest (most positive) eigenpairs of the
    co-occurrence matrix, i.e. its best positive semi-definite rank-`dim` factor, so items that share
    neighbours get similar vectors. Columns by descending eigenvalue, each column's sign fixed
    (largest entry positive), so the result is deterministic. Columns beyond MAX_RANK or of
    non-positive eigenvalues, and rows of items without a training neighbour, are zero.

    Largest eigenvalues, not singular values: a singular vector can come from a negative eigenvalue,
    which gives neighbours opposite signs (an item chain a-b-c makes a and b anti-correlated)."""
    n = len(items)
    out = np.zeros((n, dim), dtype=np.float32)
    m = cooccurrence_matrix(split, items)
    if m.nnz == 0:
        return out
    k = min(dim, MAX_RANK, n - 1)
    if n <= 2 * k + 1:  # tiny catalogues: a dense eigendecomposition (eigsh needs k < n)
        lam, u = np.linalg.eigh(m.toarray())
    else:
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(seed).standard_normal(n)  # ARPACK's start vector, seeded
        lam, u = eigsh(m.astype(np.float64), k=k, which="LA", v0=v0)
    order = np.argsort(-lam)[:k]
    vec = u[:, order] * np.sqrt(np.clip(lam[order], 0.0, None))
    flip = np.sign(vec[np.abs(vec).argmax(0), np.arange(vec.shape[1])])
    vec = vec * np.where(flip == 0, 1.0, flip)
    out[:, :vec.shape[1]] = vec
    out[np.asarray(m.getnnz(axis=1)) == 0] = 0.0
    return out


def init_item_embeddings(model, tokenizer, index, split: Split, seed: int = 0) -> int:
    """Overwrite the embedding row of every item token (atomic ids: one piece per item) with its
    co-occurrence vector, scaled to the table's standard deviation; returns how many rows changed.
    An untied output layer gets the same vectors in its item rows, scaled to its own deviation."""
    if index.method != "atomic":
        raise ConfigError(f"--item-init cooc: needs --index atomic (one token per item), got --index {index.method}")
    items = list(index.codes)
    ids = tokenizer.convert_tokens_to_ids([index.codes[i][0] for i in items])
    unk = getattr(tokenizer, "unk_token_id", None)
    if any(t is None or t == unk for t in ids):
        raise ConfigError("--item-init cooc: an item piece is not a token of the tokenizer")
    backbone = getattr(model, "backbone", model)
    table = backbone.get_input_embeddings().weight
    vec = torch.from_numpy(cooccurrence_vectors(split, items, table.shape[1], seed))
    has = vec.abs().sum(1) > 0
    if not bool(has.any()):
        return 0
    rows = torch.tensor(ids)[has]
    targets = [table]
    out = backbone.get_output_embeddings()
    if out is not None and out.weight is not None and out.weight.data_ptr() != table.data_ptr():
        targets.append(out.weight)
    with torch.no_grad():
        for w in targets:
            scale = float(w.detach().float().std()) / float(vec[has].std())
            w[rows] = (vec[has] * scale).to(w.dtype)
    return int(has.sum())
