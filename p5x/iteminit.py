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

`markov` fits the rows instead: a factorised first-order Markov model over the training
histories, P(next = b | last = a) = softmax_b(s * e_a . e_b), trained with a full softmax over
the catalogue on every consecutive pair of a training sequence (the number of passes chosen on each
sequence's held-out last training pair; seconds on a GPU, a few minutes on a CPU), and keeps the item
vectors e. The scores are tied, like a tied T5's output layer, which scores the catalogue with the
table it reads the history from. (`fit_markov(query_map=True)` also fits a matrix W, e_a W . e_b, a
directed model that ranks better on its own, but a t5-tiny started from its rows did worse than
from cooc's: bench/RESULTS.md, session 13.) Only `Split.train` is read here too.

A tied model scores each item against itself with s * |e_a|^2, which only a neighbour of larger norm
can beat, so the model's first answer tends to be the history's last item (on Beauty, where no
target repeats its history, that slot is wasted: bench/RESULTS.md, session 22). `markov-untied`
goes on from the tied fit with two tables, P(next = b | last = a) = softmax_b(s * e_a . f_b), both
started from the tied rows, at a lower learning rate and with a second term in the loss,
softplus(score of a after a - score of the true next item after a), until the held-out ranking
stops improving. e_a, the item as the last of a history, goes into the input embedding table, f_b,
the item as the answer, into the output layer (`--output-layer untied`), so a model that copies the
last item's input row to its output starts from a ranker that keeps the tied fit's neighbourhoods
but puts an item below its successors after itself. (Two tables fitted from random rows rank worse:
without the tied start they lose the symmetric neighbourhoods, which carry much of the signal on
Beauty; bench/RESULTS.md, session 23.)

Rows of items with no training neighbour keep the backbone's random initialisation; the new rows
are scaled to the embedding table's own standard deviation, so a pretrained table keeps its scale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError
from .split import Split

METHODS = ("random", "cooc", "markov", "markov-untied")
MAX_RANK = 512  # eigenpairs computed at most (t5-small's width); wider tables get zeros beyond
DENSE_MAX = 40_000  # items: up to here a dense eigendecomposition runs on an explicitly given device
MARKOV_MAX_EPOCHS = 20  # passes over the training pairs at most while choosing how many (fit_markov)
MARKOV_PATIENCE = 2  # passes without a better held-out NDCG@10 before that choice stops
MARKOV_BATCH = 1024
MARKOV_UNTIE_LR_SCALE = 0.3  # markov-untied's second stage: this times the fit's lr (Beauty valid, session 23)
MARKOV_SELF_WEIGHT = 1.0  # markov-untied's second stage: weight of the term that ranks an item below its successors after itself


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


def _held_out_ndcg(query, emb, src, dst, chunk: int = 4096) -> float:
    """Mean NDCG@10 of each dst among all items, scored by query[src] . emb (ties count against it)."""
    total = 0.0
    for i in range(0, len(src), chunk):
        sc = query[src[i:i + chunk]] @ emb.T
        rank = (sc >= sc.gather(1, dst[i:i + chunk, None])).sum(1) - 1
        gain = 1.0 / torch.log2(rank.double() + 2)
        total += float(torch.where(rank < 10, gain, torch.zeros_like(gain)).sum())
    return total / max(len(src), 1)


def _fit_pairs(n, dim, src, dst, seed, dev, lr, epochs, check=None, bar=None, query_map=False, start=None,
               self_weight=0.0):
    """Adam on the full-softmax next-item loss for `epochs` passes; with `check` = (src, dst), stop
    once its NDCG@10 has not improved for MARKOV_PATIENCE passes. Returns (E, Q, passes, s): the
    rows after the last pass, or, with a check set, the rows of the pass with the best held-out
    NDCG@10 and that pass count (with `start`: 0 when no pass beats those rows); s is the fitted scale.
    start: (source rows, answer rows, s) to go on from as two tables, s * e_a . f_b (the second stage
    of markov-untied); E is then the answer table and Q = s * the source rows. self_weight adds
    self_weight * softplus(score(a after a) - score(the true next item after a)) to the loss, which
    pushes each item below its successors after itself.
    NDCG rather than the held-out loss: on Beauty the loss rises from the first pass (confident
    misses) while the ranking keeps improving for several more."""
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.eye(dim, device=dev))
    if start is None:
        emb = torch.nn.Parameter((0.1 * torch.randn(n, dim, generator=g)).to(dev))
        out = emb
        s = torch.nn.Parameter(torch.tensor(10.0, device=dev))
    else:
        emb, out = (torch.nn.Parameter(x.detach().clone().to(dev)) for x in start[:2])
        s = torch.nn.Parameter(torch.as_tensor(start[2], dtype=torch.float32).detach().clone().to(dev))
    params = [emb, s] + ([w] if query_map else []) + ([out] if out is not emb else [])
    opt = torch.optim.Adam(params, lr=lr)
    src_t, dst_t = torch.from_numpy(src).to(dev), torch.from_numpy(dst).to(dev)
    check_t = None if check is None else tuple(torch.from_numpy(x).to(dev) for x in check)
    best, best_pass, since, best_rows = -1.0, epochs, 0, None

    def rows():
        with torch.no_grad():
            return out.detach().clone(), (s * emb @ w).detach(), s.detach().clone()

    if check_t is not None and start is not None:  # given rows are a candidate: no pass beats them, zero passes
        with torch.no_grad():
            best, best_pass, best_rows = _held_out_ndcg(s * emb @ w, out, *check_t), 0, rows()

    for k in range(epochs):
        perm = torch.randperm(len(src), generator=g).to(dev)
        for b in perm.split(MARKOV_BATCH):
            query = s * (emb[src_t[b]] @ w)
            logits = query @ out.T
            loss = torch.nn.functional.cross_entropy(logits, dst_t[b])
            if self_weight:
                own = (query * out[src_t[b]]).sum(1)
                loss = loss + self_weight * torch.nn.functional.softplus(own - logits.gather(1, dst_t[b, None])[:, 0]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if bar is not None:
                bar.update()
        if check_t is not None:
            with torch.no_grad():
                held = _held_out_ndcg(s * emb @ w, out, *check_t)
            if held > best:
                best, best_pass, since, best_rows = held, k + 1, 0, rows()
            else:
                since += 1
                if since >= MARKOV_PATIENCE:
                    break
    e, q, scale = best_rows if best_rows is not None else rows()
    return e, q, best_pass, scale


def _fit_untied(n, dim, src, dst, seed, dev, lr, passes, bar=None):
    """markov-untied: the tied fit for passes[0] passes, then both tables from its rows for passes[1]
    passes at MARKOV_UNTIE_LR_SCALE * lr with the self term (MARKOV_SELF_WEIGHT); _fit_pairs' tuple."""
    e, _, _, scale = _fit_pairs(n, dim, src, dst, seed, dev, lr, passes[0], bar=bar)
    return _fit_pairs(n, dim, src, dst, seed, dev, lr * MARKOV_UNTIE_LR_SCALE, passes[1], bar=bar,
                      start=(e, e, scale), self_weight=MARKOV_SELF_WEIGHT)


def fit_markov(split: Split, items: list[str], dim: int, seed: int = 0, device=None, epochs: int | None = None,
               lr: float | None = None, progress: bool = False, query_map: bool = False, two_tables: bool = False):
    """Fit the factorised Markov model of the module docstring; returns (E [n, dim], Q [n, dim],
    passes) with E, Q float32 numpy: Q = s * E W is each item's query as the last item of a history
    (the ranker p5x.baselines `markov` uses), E the item vectors (what --item-init markov keeps).
    two_tables (markov-untied): E is the answer table F and Q = s * (the source rows); the ranker is
    still Q[last] . E, and --item-init markov-untied puts Q's rows in the input table, E's in the
    output layer. It is fitted in two stages (the module docstring), and `passes` is their sum.

    `epochs` None: the number of passes is chosen on the training data itself. Each sequence's last
    training pair is held out, a fit on the other pairs runs until the held-out NDCG@10 stops rising
    (at most MARKOV_MAX_EPOCHS passes), and the model is refitted on every pair for the best number
    of passes (two_tables: each stage's count chosen so in turn, the second stage going on from the
    first's held-out fit). An int `epochs` is used for each stage. Seeded: the same split, seed and
    device give the same rows. Items in no training pair get zero rows. `lr` None: 1e-2 * 64 / dim
    (Adam; a wider table overfits sooner)."""
    if query_map and two_tables:
        raise ValueError("fit_markov: query_map and two_tables are two different directed models; pick one")
    n = len(items)
    from .baselines import training_pairs

    src, dst, last = training_pairs(split, items)
    if len(src) == 0:
        z = np.zeros((n, dim), dtype=np.float32)
        return z, z.copy(), 0
    dev = torch.device(device or "cpu")
    lr = lr if lr is not None else 1e-2 * 64 / max(dim, 1)
    from tqdm import tqdm

    stages = 2 if two_tables else 1
    per_pass = -(-len(src) // MARKOV_BATCH)
    with tqdm(total=per_pass * stages * (epochs or 2 * MARKOV_MAX_EPOCHS), desc="markov item init",
              disable=not progress, leave=False) as bar:
        if epochs is None:
            keep = ~last
            if keep.any() and last.any():
                held = (src[last], dst[last])
                first = _fit_pairs(n, dim, src[keep], dst[keep], seed, dev, lr, MARKOV_MAX_EPOCHS, held, bar,
                                   query_map)
                passes = (first[2],)
                if two_tables:
                    passes += (_fit_pairs(n, dim, src[keep], dst[keep], seed, dev, lr * MARKOV_UNTIE_LR_SCALE,
                                          MARKOV_MAX_EPOCHS, held, bar, start=(first[0], first[0], first[3]),
                                          self_weight=MARKOV_SELF_WEIGHT)[2],)
            else:
                passes = (MARKOV_MAX_EPOCHS // 2,) * stages
        else:
            passes = (epochs,) * stages
        bar.total = bar.n + per_pass * sum(passes)
        if two_tables:
            e, q, _, _ = _fit_untied(n, dim, src, dst, seed, dev, lr, passes, bar=bar)
        else:
            e, q, _, _ = _fit_pairs(n, dim, src, dst, seed, dev, lr, passes[0], bar=bar, query_map=query_map)
    seen = np.zeros(n, dtype=bool)
    seen[src] = True
    seen[dst] = True
    e_np, q_np = e.float().cpu().numpy(), q.float().cpu().numpy()
    e_np[~seen] = 0.0
    q_np[~seen] = 0.0
    return e_np, q_np, sum(passes)


def item_vectors(method: str, split: Split, items: list[str], dim: int, seed: int = 0, device=None,
                 progress: bool = False, cache: str | Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(input rows, output rows), each [len(items), dim] float32, of `method`; output None for the
    tied methods (cooc, markov: one table serves both); zero rows are left alone.

    `cache`: a folder (cache_dir() gives the default) where the rows are kept, keyed on everything
    the fit reads (cache_key); a second run of the same method, data, seed, width and device loads
    them instead of fitting again. None: no cache."""
    if cache is None:
        return _item_vectors(method, split, items, dim, seed, device, progress)
    path = Path(cache) / "item_init" / f"{method}-{cache_key(method, split, items, dim, seed, device)}.safetensors"
    got = _read_cached(path, len(items), dim)
    if got is not None:
        if progress:
            print(f"item rows ({method}) loaded from the cache: {path}", file=sys.stderr)
        return got
    vec_in, vec_out = _item_vectors(method, split, items, dim, seed, device, progress)
    if _write_cached(path, vec_in, vec_out, method) and progress:
        print(f"item rows ({method}) cached for the next run: {path}", file=sys.stderr)
    return vec_in, vec_out


CACHE_VERSION = 1  # bump when a fit gives other rows for the same inputs (its code, not its constants, changed)
CACHE_ENV = "P5X_CACHE_DIR"


def cache_dir(setting: str | None = None) -> Path | None:
    """The folder --item-init keeps its fitted rows in: `setting` if given ("off": none), else
    $P5X_CACHE_DIR ("off" there too), else ~/.cache/p5x."""
    import os

    value = setting or os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "p5x")
    return None if value == "off" else Path(value).expanduser()


def cache_key(method: str, split: Split, items: list[str], dim: int, seed: int = 0, device=None) -> str:
    """Hex digest of what `method`'s rows depend on: the item order, every consecutive pair of the
    training histories (in order, with which one is each sequence's last), the width, the seed, the
    device type (a GPU's float sums differ from the CPU's), this module's constants and CACHE_VERSION."""
    import hashlib
    import json

    from .baselines import training_pairs

    src, dst, last = training_pairs(split, items)
    consts = {k: v for k, v in globals().items() if k.isupper() and isinstance(v, (int, float, str, tuple))}
    head = {"method": method, "dim": int(dim), "seed": int(seed), "n": len(items), "constants": consts,
            "device": torch.device(device or "cpu").type, "version": CACHE_VERSION}
    h = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
    h.update("\0".join(items).encode())
    if method == "cooc":  # cooc reads whole training sequences, not only their pairs
        for xs in split.train.values():
            h.update(("\0".join(x.item_id for x in xs) + "\n").encode())
    for a in (src, dst, last):
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _read_cached(path: Path, n: int, dim: int):
    """The cached (input, output) rows at `path`, or None when it is missing or not what is expected
    (another shape, a damaged file: a warning, then the rows are fitted again)."""
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    try:
        t = load_file(str(path))
        vec_in, vec_out = t["input"], t.get("output")
        for v in (vec_in, vec_out):
            if v is not None and (v.shape != (n, dim) or v.dtype != np.float32):
                raise ValueError(f"shape {v.shape} {v.dtype}, expected ({n}, {dim}) float32")
    except Exception as e:  # noqa: BLE001 - a damaged cache entry is refitted, never trusted
        import warnings

        warnings.warn(f"{path}: cached item rows unreadable ({e}); fitting them again", stacklevel=3)
        return None
    return vec_in, vec_out


def _write_cached(path: Path, vec_in: np.ndarray, vec_out: np.ndarray | None, method: str) -> bool:
    """Write the rows as safetensors through a temp file and a rename; True when written. A cache
    that cannot be written (read-only home, full disk) only warns."""
    from safetensors.numpy import save_file

    from .paths import atomic_output

    tensors = {"input": np.ascontiguousarray(vec_in, dtype=np.float32)}
    if vec_out is not None:
        tensors["output"] = np.ascontiguousarray(vec_out, dtype=np.float32)
    try:
        with atomic_output(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "p5x-item-init", "method": method,
                                                   "version": str(CACHE_VERSION)})
    except OSError as e:
        import warnings

        warnings.warn(f"{path}: could not cache the fitted item rows ({e})", stacklevel=3)
        return False
    return True


def _item_vectors(method: str, split: Split, items: list[str], dim: int, seed: int = 0, device=None,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """item_vectors without the cache."""
    if method == "cooc":
        return cooccurrence_vectors(split, items, dim, seed, device), None
    if method == "markov":
        return fit_markov(split, items, dim, seed, device, progress=progress)[0], None
    if method == "markov-untied":
        answer, source, _ = fit_markov(split, items, dim, seed, device, progress=progress, two_tables=True)
        return source, answer
    raise ConfigError(f"--item-init: expected one of {', '.join(METHODS[1:])}, got {method!r}")


def item_token_ids(tokenizer, index, what: str = "--item-init") -> list[int]:
    """Token id of each item of an atomic index, in index order; a piece the tokenizer lacks raises."""
    if index.method != "atomic":
        raise ConfigError(f"{what}: needs --index atomic (one token per item), got --index {index.method}")
    ids = tokenizer.convert_tokens_to_ids([index.codes[i][0] for i in index.codes])
    unk = getattr(tokenizer, "unk_token_id", None)
    if any(t is None or t == unk for t in ids):
        raise ConfigError(f"{what}: an item piece is not a token of the tokenizer")
    return ids


def item_tables(model) -> list:
    """The weight tables that hold a row per token: the input embeddings, and an untied output layer."""
    backbone = getattr(model, "backbone", model)
    tables = [backbone.get_input_embeddings().weight]
    out = backbone.get_output_embeddings()
    if out is not None and out.weight is not None and out.weight.data_ptr() != tables[0].data_ptr():
        tables.append(out.weight)
    return tables


def init_item_embeddings(model, tokenizer, index, split: Split, seed: int = 0, device=None,
                         method: str = "cooc", progress: bool = False, cache: str | Path | None = None) -> int:
    """Overwrite the embedding row of every item token (atomic ids: one piece per item) with its
    `method` vector (cooc, markov or markov-untied), scaled to the table's standard deviation; returns
    how many rows changed. An untied output layer gets the same vectors in its item rows (markov-untied:
    the answer rows), scaled to its own deviation. `device`: a GPU for the eigendecomposition or the Markov fit, or None for the CPU.
    `cache`: a folder to keep and reuse the fitted rows in (item_vectors), or None."""
    ids = item_token_ids(tokenizer, index, f"--item-init {method}")
    items = list(index.codes)
    targets = item_tables(model)
    if method == "markov-untied" and len(targets) < 2:
        raise ConfigError("--item-init markov-untied: needs an untied output layer (--output-layer untied); "
                          "this backbone scores its output with the input table")
    table = targets[0]
    vec_in, vec_out = item_vectors(method, split, items, table.shape[1], seed, device, progress, cache)
    vecs = [torch.from_numpy(vec_in)] + [torch.from_numpy(vec_in if vec_out is None else vec_out)] * (len(targets) - 1)
    has = vecs[0].abs().sum(1) > 0
    for v in vecs[1:]:
        has &= v.abs().sum(1) > 0
    if not bool(has.any()):
        return 0
    rows = torch.tensor(ids)[has]
    with torch.no_grad():
        for w, vec in zip(targets, vecs):
            scale = float(w.detach().float().std()) / float(vec[has].std())
            w[rows] = (vec[has] * scale).to(w.dtype)
    return int(has.sum())
