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
MAX_RANK = 512  # eigenpairs computed at most (t5-small's width); wider tables get zeros beyond
DENSE_MAX = 40_000  # items: up to here a dense eigendecomposition runs on an explicitly given device


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


def _top_eigenpairs(m, k: int, seed: int, device=None) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues, eigenvectors as columns) of the symmetric sparse `m`, the k largest first.

    Tiny matrices: numpy's dense eigh. With `device` (train.py passes its GPU) and at most DENSE_MAX
    items: torch's dense eigh in float32 there (Beauty's 12,101 items: one 12k x 12k matrix, 0.6 GB).
    Otherwise ARPACK on the CPU (scipy eigsh, seeded start vector), which slows with k: Beauty on 2
    CPU cores took 3.8 s at k=128 and 86 s at k=512, a dense eigh there 254 s."""
    n = m.shape[0]
    if n <= 2 * k + 1:  # eigsh needs k < n; a dense solve is cheaper here anyway
        lam, u = np.linalg.eigh(m.toarray())
    elif device is not None and n <= DENSE_MAX:
        lam_t, u_t = torch.linalg.eigh(torch.from_numpy(m.astype(np.float32).toarray()).to(device))
        lam, u = lam_t.double().cpu().numpy(), u_t.double().cpu().numpy()
    else:
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(seed).standard_normal(n)  # ARPACK's start vector, seeded
        lam, u = eigsh(m.astype(np.float64), k=k, which="LA", v0=v0)
    order = np.argsort(-lam)[:k]
    return lam[order], u[:, order]


def cooccurrence_vectors(split: Split, items: list[str], dim: int, seed: int = 0, device=None) -> np.ndarray:
    """[len(items), dim] float32: U * sqrt(L) for the `dim` largest (most positive) eigenpairs of the
    co-occurrence matrix, i.e. its best positive semi-definite rank-`dim` factor, so items that share
    neighbours get similar vectors. Columns by descending eigenvalue, each column's sign fixed
    (largest entry positive), so the result is deterministic for one solver. Columns beyond MAX_RANK
    or of non-positive eigenvalues, and rows of items without a training neighbour, are zero.
    `device`: where a dense eigendecomposition may run (see _top_eigenpairs); None keeps to the CPU.

    Largest eigenvalues, not singular values: a singular vector can come from a negative eigenvalue,
    which gives neighbours opposite signs (an item chain a-b-c makes a and b anti-correlated)."""
    n = len(items)
    out = np.zeros((n, dim), dtype=np.float32)
    m = cooccurrence_matrix(split, items)
    if m.nnz == 0:
        return out
    k = min(dim, MAX_RANK, n - 1)
    lam, u = _top_eigenpairs(m, k, seed, device)
    vec = u * np.sqrt(np.clip(lam, 0.0, None))
    flip = np.sign(vec[np.abs(vec).argmax(0), np.arange(vec.shape[1])])
    vec = vec * np.where(flip == 0, 1.0, flip)
    out[:, :vec.shape[1]] = vec
    out[np.asarray(m.getnnz(axis=1)) == 0] = 0.0
    return out


def init_item_embeddings(model, tokenizer, index, split: Split, seed: int = 0, device=None) -> int:
    """Overwrite the embedding row of every item token (atomic ids: one piece per item) with its
    co-occurrence vector, scaled to the table's standard deviation; returns how many rows changed.
    An untied output layer gets the same vectors in its item rows, scaled to its own deviation.
    `device`: a GPU for the eigendecomposition (cooccurrence_vectors), or None for the CPU."""
    if index.method != "atomic":
        raise ConfigError(f"--item-init cooc: needs --index atomic (one token per item), got --index {index.method}")
    items = list(index.codes)
    ids = tokenizer.convert_tokens_to_ids([index.codes[i][0] for i in items])
    unk = getattr(tokenizer, "unk_token_id", None)
    if any(t is None or t == unk for t in ids):
        raise ConfigError("--item-init cooc: an item piece is not a token of the tokenizer")
    backbone = getattr(model, "backbone", model)
    table = backbone.get_input_embeddings().weight
    vec = torch.from_numpy(cooccurrence_vectors(split, items, table.shape[1], seed, device))
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
