"""Baselines on exactly the split the p5x model sees: popularity, transition, SASRec, rating baselines.

    python -m p5x.baselines --data DIR --split test --tasks sequential,direct,rating --out DIR

Split: `p5x.split.time_split(load_dataset(DIR))`. Models train on `split.train` only; when
evaluating on test a user's history is train + valid (`split.history(u, "test")`), on valid it is
train. Protocols:

- sequential: full ranking over ALL catalogue items, HR@5/10/20 and NDCG@5/10/20. Nothing is
  excluded from the ranking by default (not even items the user already has): the model's
  constrained decoding cannot exclude them either. `--exclude-history` changes that, and says so.
- direct: "sampled 1-of-100": the target plus 99 negatives drawn (seeded per user) from items
  the user never interacted with in any part of the split; HR@1/5/10, NDCG@5/10. Ties in a
  score are broken by a seeded shuffle of the candidates, never in the target's favour.
- rating: global mean, user mean (global mean for users without training ratings) and biased
  matrix factorisation, RMSE/MAE over every evaluated record that has a rating.

transition scores each item by how often it directly followed the history's last item in the
training sequences (a first-order Markov chain), popularity breaking ties; cheap and, on sparse
Amazon sets, far stronger than popularity. cooc (only with `--models cooc`) scores items by the dot
product of their co-occurrence vectors with the last item's: what `train.py --item-init cooc`
gives a model before its first step, so a row for that init can be read against it. markov (only
with `--models markov`) is the factorised next-item model `--item-init markov` fits (tied: the last
item's own row, times the fitted scale, dotted with every row), so its row reads against that init;
markov-untied the two-table model `--item-init markov-untied` fits (the last item's source row
dotted with every item's answer row). content (only with `--models content`) ranks by p5x.content's
prior alone: the TF-IDF similarity of the items' titles, brands and categories to the history's last
three items (weights 1, .5, .25; no item its own neighbour), what `p5x.evaluate --content-prior`
adds to the model's scores.

`--content-prior W` adds, for the sequential task, a second row for each of popularity, transition,
sasrec, markov and markov-untied: that model's next-item log-probability plus W times the same
content prior, the sum `p5x.evaluate --content-prior W` ranks a p5x model by. These rows use the
items' metadata, as the p5x rows with a content prior do, and are the fair bar for those: they show
how much of such a row the text alone, joined to a count table or a fitted next-item model, already
gives. The log-probabilities: popularity, the training counts plus one, normalised; transition,
(successor count + TRANSITION_SMOOTHING x popularity) / (all successors + TRANSITION_SMOOTHING) of
the last item; markov / markov-untied, the fitted model's softmax over the catalogue; sasrec, its
softmax. (cooc is no probability model and gets no such row.)

SASRec (Kang & McAuley 2018) here is trained with full-softmax cross-entropy over all items at
every position, which is what makes it strong; `sasrec-sigmoid` is the same encoder with a
P(like | history, item) head trained with BCE on liked (rating > 3) / disliked labels, for yes/no
comparisons (AUC).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import metrics as M
from .errors import ConfigError, P5XError
from .schema import Dataset, load_dataset
from .split import Split, time_split

SEQ_KS = (5, 10, 20)
DIRECT_KS, DIRECT_NDCG_KS = (1, 5, 10), (5, 10)
N_NEGATIVES = 99
TASKS = ("sequential", "direct", "rating")
RANKERS = ("popularity", "transition", "sasrec")  # the sequential / direct baselines run by default
EXTRA_RANKERS = ("cooc", "markov", "markov-untied", "content")  # on request only (--models)
PRIOR_RANKERS = ("popularity", "transition", "sasrec", "markov", "markov-untied")  # get a + content row
# pseudo-counts of popularity in the transition chain's probabilities, for its + content row (chosen on
# Beauty's validation part among 0.1 .. 10,000 with the prior: bench/RESULTS.md, session 37)
TRANSITION_SMOOTHING = 100.0


# ----------------------------------------------------------------------------------------------
# candidates and histories


def _histories(split: Split, users: list[str], part: str) -> list[list[str]]:
    return [split.history_ids(u, part) for u in users]


def _rank_candidates(scores: np.ndarray, cands: list[list[str]], seed: int) -> list[list[str]]:
    """Sort each user's candidates by score (desc), ties in a seeded random order."""
    rng = np.random.default_rng(seed)
    out = []
    for s, c in zip(scores, cands):
        perm = rng.permutation(len(c))
        order = perm[np.argsort(-s[perm], kind="stable")]
        out.append([c[i] for i in order])
    return out


def _full_rank(score_fn, histories: list[list[str]], item_ids: list[str], k: int, exclude: bool = False,
               chunk: int = 1024) -> list[list[str]]:
    """Top-k raw ids for each history, scoring all items with score_fn(histories chunk) -> [c, n_items].

    Chunked so that a [users, items] score matrix (22k x 12k on Beauty) is never held at once.
    With `exclude`, each user's history items are removed from the ranking first.
    """
    pos = {iid: j for j, iid in enumerate(item_ids)}
    out: list[list[str]] = []
    for s in range(0, len(histories), chunk):
        hist = histories[s:s + chunk]
        scores = torch.as_tensor(score_fn(hist)).float().clone()
        if exclude:
            for r, h in enumerate(hist):
                scores[r, [pos[i] for i in h if i in pos]] = float("-inf")
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.cpu().numpy()
        out += [[item_ids[j] for j in row] for row in top]
    return out


# ----------------------------------------------------------------------------------------------
# popularity


def popularity_counts(split: Split, item_ids: list[str]) -> np.ndarray:
    """Number of training interactions of each item, aligned with item_ids."""
    pos = {iid: j for j, iid in enumerate(item_ids)}
    c = np.zeros(len(item_ids), dtype=np.float64)
    for xs in split.train.values():
        for x in xs:
            c[pos[x.item_id]] += 1
    return c


def popularity_scores(split: Split, item_ids: list[str]) -> np.ndarray:
    """Counts with a tiny rank-based tie-break (catalogue order), so the full ranking is fixed."""
    c = popularity_counts(split, item_ids)
    return c - np.arange(len(item_ids)) * (0.5 / max(1, len(item_ids)))


def popularity_probs(split: Split, item_ids: list[str]) -> np.ndarray:
    """P(item) from the training counts plus one (float64, sums to 1): popularity's log-probability."""
    c = popularity_counts(split, item_ids) + 1.0
    return c / c.sum()


def popularity_tiebreak(split: Split, item_ids: list[str], scale: float) -> torch.Tensor:
    """Popularity scaled into [0, scale] (float64): added to a ranker's scores, it orders only their ties."""
    pop = popularity_scores(split, item_ids)
    return torch.from_numpy(scale * (pop - pop.min()) / max(1e-9, float(pop.max() - pop.min())))


# ----------------------------------------------------------------------------------------------
# transition (first-order Markov chain on the last item)


def last_positions(pos: dict[str, int], histories: list[list[str]]) -> np.ndarray:
    """Catalogue position of each history's last item; -1 for an empty history or an unknown item."""
    return np.array([pos.get(h[-1], -1) if h else -1 for h in histories], dtype=np.int64)


def training_pairs(split: Split, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(previous, next, is_last) item positions over every consecutive pair of a training sequence,
    repeats kept; is_last marks each sequence's final pair (p5x.iteminit.fit_markov's check set)."""
    pos = {iid: j for j, iid in enumerate(item_ids)}
    src: list[int] = []
    dst: list[int] = []
    last: list[bool] = []
    for xs in split.train.values():
        idx = [pos[x.item_id] for x in xs]
        src += idx[:-1]
        dst += idx[1:]
        last += [False] * (len(idx) - 2) + [True] if len(idx) > 1 else []
    return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64), np.asarray(last, dtype=bool)


def transition_counts(split: Split, item_ids: list[str]):
    """[n_items, n_items] sparse counts of item j directly following item i in a training sequence."""
    from scipy.sparse import csr_matrix

    src, dst, _ = training_pairs(split, item_ids)
    n = len(item_ids)
    return csr_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))  # duplicates are summed


class TransitionScorer:
    """Scores every item by how often it followed the history's last item in training, then by popularity.

    Popularity (scaled into [0, 0.9]) only orders items the last item never led to, and ranks
    everything for an empty history or a last item never seen with a successor. Trained on
    split.train only, as SASRec.
    """

    def __init__(self, split: Split, item_ids: list[str]):
        self.pos = {iid: j for j, iid in enumerate(item_ids)}
        self.counts = transition_counts(split, item_ids)
        pop = popularity_scores(split, item_ids)
        self.prior = 0.9 * (pop - pop.min()) / max(1e-9, float(pop.max() - pop.min()))
        self.pop_p = popularity_probs(split, item_ids)

    def __call__(self, histories: list[list[str]]) -> torch.Tensor:
        """[len(histories), n_items] scores over the whole catalogue."""
        out = np.tile(self.prior, (len(histories), 1))
        last = last_positions(self.pos, histories)
        seen = np.flatnonzero(last >= 0)
        if len(seen):
            out[seen] += self.counts[last[seen]].toarray()
        return torch.from_numpy(out)

    def log_probs(self, histories: list[list[str]], smoothing: float = TRANSITION_SMOOTHING) -> torch.Tensor:
        """[len(histories), n_items] float64 log P(next | last item): the last item's successor counts
        plus `smoothing` pseudo-counts spread by popularity (training counts plus one); popularity
        alone for an empty history or a last item never seen with a successor."""
        out = np.tile(self.pop_p * smoothing, (len(histories), 1))
        last = last_positions(self.pos, histories)
        seen = np.flatnonzero(last >= 0)
        if len(seen):
            out[seen] += self.counts[last[seen]].toarray()
        return torch.from_numpy(np.log(out / out.sum(1, keepdims=True)))

    def candidate_scores(self, histories: list[list[str]], cands: list[list[str]]) -> np.ndarray:
        """[users, candidates] scores of each user's own candidate list (equal lengths)."""
        c = np.array([[self.pos[i] for i in cs] for cs in cands], dtype=np.int64)
        out = self.prior[c]
        last = last_positions(self.pos, histories)
        seen = np.flatnonzero(last >= 0)
        if len(seen):
            rows = np.repeat(last[seen], c.shape[1])
            out[seen] += np.asarray(self.counts[rows, c[seen].ravel()]).reshape(len(seen), -1)
        return out


class FactorScorer:
    """What `train.py --item-init cooc|markov|markov-untied` puts into the model before training, as a
    ranker of its own: the last item's query vector dotted with every item's vector (p5x.iteminit; for
    cooc the query is the item's own vector, for markov the fitted scale times it, for markov-untied
    its source row times the scale, dotted with the answer rows);
    popularity breaks ties and ranks alone for an empty history or an item with no training pair."""

    def __init__(self, split: Split, item_ids: list[str], dim: int = 64, method: str = "cooc", seed: int = 0,
                 device: str | None = None, progress: bool = False):
        """device: where the eigendecomposition (cooc) or the fit (markov) runs, as train.py's
        --item-init does on its training device; None keeps to the CPU."""
        from .iteminit import cache_dir, cooccurrence_vectors, fit_markov, item_vectors

        self.pos = {iid: j for j, iid in enumerate(item_ids)}
        self.method = method
        if method == "cooc":
            self.vec = torch.from_numpy(cooccurrence_vectors(split, item_ids, dim, device=device)).double()
            self.query = self.vec
        elif method == "markov-untied":  # the two tables train.py --item-init keeps in its cache, so reuse it
            query, vec = item_vectors(method, split, item_ids, dim, seed, device, progress, cache=cache_dir())
            self.vec, self.query = torch.from_numpy(vec).double(), torch.from_numpy(query).double()
        else:
            vec, query, _ = fit_markov(split, item_ids, dim, seed, device, progress=progress)
            self.vec, self.query = torch.from_numpy(vec).double(), torch.from_numpy(query).double()
        self.prior = popularity_tiebreak(split, item_ids, 1e-9)

    def _query(self, histories: list[list[str]]) -> torch.Tensor:
        """[users, dim]: the last item's query, zero for an empty history or an unknown item."""
        last = torch.from_numpy(last_positions(self.pos, histories))
        return torch.where((last >= 0)[:, None], self.query[last.clamp(min=0)], torch.zeros(1, dtype=self.vec.dtype))

    def __call__(self, histories: list[list[str]]) -> torch.Tensor:
        """[len(histories), n_items] scores over the whole catalogue."""
        return self._query(histories) @ self.vec.T + self.prior

    def log_probs(self, histories: list[list[str]]) -> torch.Tensor:
        """[len(histories), n_items] the fitted next-item model's log-softmax over the catalogue (markov,
        markov-untied; uniform for an empty history or an unknown last item)."""
        if self.method == "cooc":
            raise ValueError("cooc's vectors are no probability model; it has no log-probabilities")
        return torch.log_softmax(self._query(histories) @ self.vec.T, dim=1)

    def candidate_scores(self, histories: list[list[str]], cands: list[list[str]]) -> np.ndarray:
        """[users, candidates] scores of each user's own candidate list (equal lengths)."""
        c = torch.tensor([[self.pos[i] for i in cs] for cs in cands], dtype=torch.long)
        return (torch.einsum("ud,ucd->uc", self._query(histories), self.vec[c]) + self.prior[c]).numpy()


class ContentScorer:
    """p5x.content.ContentPrior as a ranker; popularity breaks ties and ranks alone where the prior is 0."""

    def __init__(self, ds: Dataset, split: Split, item_ids: list[str]):
        from .content import ContentPrior

        self.prior_of = ContentPrior(ds, item_ids)
        self.pos = {iid: j for j, iid in enumerate(item_ids)}
        self.tie = popularity_tiebreak(split, item_ids, 1e-6).float()

    def __call__(self, histories: list[list[str]]) -> torch.Tensor:
        return torch.from_numpy(self.prior_of.scores(histories)) + self.tie

    def candidate_scores(self, histories: list[list[str]], cands: list[list[str]], chunk: int = 1024) -> np.ndarray:
        out = []
        for s in range(0, len(histories), chunk):
            c = torch.tensor([[self.pos[i] for i in cs] for cs in cands[s:s + chunk]], dtype=torch.long)
            out.append(self(histories[s:s + chunk]).gather(1, c).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# SASRec


class SASRecNet(nn.Module):
    """Item + learned position embeddings, pre-LN causal transformer blocks, tied output scores."""

    def __init__(self, n_items: int, dim: int = 64, layers: int = 2, heads: int = 2, max_len: int = 50,
                 dropout: float = 0.5):
        super().__init__()
        self.max_len = max_len
        self.heads = heads
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)  # 0 = padding
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.like_bias = nn.Embedding(n_items + 1, 1)  # used by the sigmoid head only
        nn.init.normal_(self.item.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        nn.init.zeros_(self.like_bias.weight)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L] left-padded item indices -> [B, L, dim] hidden states (position t sees <= t)."""
        L = seq.shape[1]
        # positions count back from the most recent item, so trimming left padding changes nothing
        pos = torch.arange(self.max_len - L, self.max_len, device=seq.device)
        x = self.item(seq) * math.sqrt(self.item.embedding_dim) + self.pos(pos)
        pad = seq == 0
        x = self.drop(x) * (~pad).unsqueeze(-1)
        # a query sees earlier real items and itself, never padding: a history's states do not depend
        # on how much left padding its batch needs (a padding query sees only itself, so no row of
        # the mask is empty and nothing turns NaN)
        eye = torch.eye(L, dtype=torch.bool, device=seq.device)
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=seq.device), 1)
        blocked = (causal | pad.unsqueeze(1)) & ~eye  # [B, query, key]
        h = self.blocks(x, mask=blocked.repeat_interleave(self.heads, 0))
        return self.norm(h)

    def all_scores(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of every item (column 0, padding, is -inf) for hidden states [..., dim]."""
        s = h @ self.item.weight.T
        s[..., 0] = float("-inf")
        return s

    def like_logit(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (h * self.item(items)).sum(-1) + self.like_bias(items).squeeze(-1)


@dataclass
class SASRec:
    """A trained SASRec: the network plus the raw id <-> index map (index 0 is padding)."""

    net: SASRecNet
    item_ids: list[str]
    objective: str  # "ce" | "sigmoid"
    device: str = "cpu"
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.index = {iid: j + 1 for j, iid in enumerate(self.item_ids)}

    def encode(self, history: list[str]) -> list[int]:
        return [self.index[i] for i in history if i in self.index][-self.net.max_len:]


def _left_pad(rows: list[list[int]], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for r, xs in enumerate(rows):
        if xs:
            out[r, length - len(xs):] = torch.tensor(xs[-length:])
    return out


def _training_rows(split: Split, model: SASRec, objective: str):
    """Per user: (input seq, targets) for CE, or (input seq, targets, liked labels) for sigmoid."""
    L = model.net.max_len
    rows = []
    for xs in split.train.values():
        ids = [model.index[x.item_id] for x in xs][-(L + 1):]
        if len(ids) < 2:
            continue
        if objective == "ce":
            rows.append((ids[:-1], ids[1:], None))
        else:
            rated = xs[-(L + 1):]
            lab = [(-1.0 if x.rating is None else float(x.rating > 3)) for x in rated[1:]]
            rows.append((ids[:-1], ids[1:], lab))
    return rows


def train_sasrec(split: Split, item_ids: list[str], objective: str = "ce", dim: int = 64, layers: int = 2,
                 heads: int = 2, max_len: int = 50, dropout: float = 0.5, epochs: int = 200,
                 batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                 device: str = "cpu", progress: bool = True) -> SASRec:
    """Train SASRec on split.train. objective "ce": next-item full softmax over all items at every
    position; "sigmoid": BCE on P(like) of each next item (liked = rating > 3; unrated ignored)."""
    if objective not in ("ce", "sigmoid"):
        raise ConfigError(f"unknown SASRec objective {objective!r} (ce, sigmoid)")
    torch.manual_seed(seed)
    net = SASRecNet(len(item_ids), dim, layers, heads, max_len, dropout).to(device)
    model = SASRec(net, list(item_ids), objective, device)
    rows = _training_rows(split, model, objective)
    if not rows:
        raise ConfigError("no training sequence with at least two items")
    seqs = _left_pad([r[0] for r in rows], max_len)
    tgts = _left_pad([r[1] for r in rows], max_len)
    labs = None
    if objective == "sigmoid":
        labs = torch.full((len(rows), max_len), -1.0)
        for r, (_, _, lab) in enumerate(rows):
            labs[r, max_len - len(lab):] = torch.tensor(lab)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    from .training import bucket_order

    lengths = (seqs > 0).sum(1).numpy()
    net.train()
    bar = tqdm(range(epochs), desc=f"sasrec-{objective}", disable=not progress, leave=False)
    for epoch in bar:
        total, nb = 0.0, 0
        # batches of similar history length (shuffled rows, sorted inside windows, batches shuffled):
        # Beauty's histories average 6 items, so random batches padded to ~45 columns did 8x the work
        perm = torch.randperm(len(rows), generator=gen).numpy()
        order = perm[bucket_order(lengths[perm], batch_size, seed * 100_003 + epoch)]
        for b in torch.from_numpy(order).split(batch_size):
            width = int(lengths[b].max())  # drop columns that are padding in every row
            seq, tgt = seqs[b, -width:].to(device), tgts[b, -width:].to(device)
            h = net(seq)
            if objective == "ce":
                keep = tgt > 0
                loss = nn.functional.cross_entropy(net.all_scores(h[keep]), tgt[keep])
            else:
                lab = labs[b, -width:].to(device)
                keep = lab >= 0
                if not bool(keep.any()):
                    continue
                loss = nn.functional.binary_cross_entropy_with_logits(net.like_logit(h[keep], tgt[keep]), lab[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, nb = total + loss.item(), nb + 1
        bar.set_postfix(loss=f"{total / max(nb, 1):.4f}")
    net.eval()
    return model


@torch.no_grad()
def score_sasrec(model: SASRec, histories: list[list[str]], items: list[list[str]] | None = None,
                 batch_size: int = 256) -> np.ndarray:
    """Scores after each history: [n, n_items] over model.item_ids when items is None, else [n, C]
    for each row's own items. The sigmoid model returns P(like) for given items."""
    model.net.eval()
    out = []
    for s in range(0, len(histories), batch_size):
        hist = histories[s:s + batch_size]
        enc = [model.encode(h) for h in hist]
        seq = _left_pad(enc, max(1, max(len(e) for e in enc))).to(model.device)
        h = model.net(seq)[:, -1]  # left padding: the last position summarises the history
        if items is None:
            out.append(model.net.all_scores(h)[:, 1:].float().cpu())
            continue
        idx = torch.tensor([[model.index.get(i, 0) for i in row] for row in items[s:s + batch_size]],
                           device=model.device)
        if model.objective == "sigmoid":
            sc = torch.sigmoid(model.net.like_logit(h.unsqueeze(1), idx))
        else:
            sc = torch.gather(model.net.all_scores(h), 1, idx)
        out.append(sc.float().cpu())
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------------------------
# rating baselines


def _rated(xs):
    return [x for x in xs if x.rating is not None]


def rating_eval_records(split: Split, part: str):
    return [split.target(u, part) for u in split.eval_users(part) if split.target(u, part).rating is not None]


def rating_train_records(split: Split, part: str):
    """Ratings of split.train only, for either part: every p5x model trains on train only too."""
    return _rated([x for xs in split.train.values() for x in xs])


def global_mean(train) -> float:
    return float(np.mean([x.rating for x in train]))


def user_means(train) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for x in train:
        acc.setdefault(x.user_id, []).append(x.rating)
    return {u: float(np.mean(v)) for u, v in acc.items()}


def train_mf(train, dim: int = 16, epochs: int = 100, lr: float = 0.01, weight_decay: float = 1e-4,
             seed: int = 0, batch_size: int = 1024, progress: bool = True):
    """Biased MF: r = mu + b_u + b_i + p_u . q_i, Adam on squared error. Returns a predict function
    (unknown users/items fall back to the biases that exist, then to mu); outputs are clipped to
    the training rating range."""
    torch.manual_seed(seed)
    users = sorted({x.user_id for x in train})
    items = sorted({x.item_id for x in train})
    uix, iix = {u: j for j, u in enumerate(users)}, {i: j for j, i in enumerate(items)}
    u = torch.tensor([uix[x.user_id] for x in train])
    i = torch.tensor([iix[x.item_id] for x in train])
    r = torch.tensor([x.rating for x in train], dtype=torch.float32)
    mu, lo, hi = float(r.mean()), float(r.min()), float(r.max())
    P, Q = nn.Embedding(len(users), dim), nn.Embedding(len(items), dim)
    bu, bi = nn.Embedding(len(users), 1), nn.Embedding(len(items), 1)
    for e in (P, Q):
        nn.init.normal_(e.weight, std=0.05)
    for e in (bu, bi):
        nn.init.zeros_(e.weight)
    params = [*P.parameters(), *Q.parameters(), *bu.parameters(), *bi.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def pred(uu, ii):
        return mu + bu(uu).squeeze(-1) + bi(ii).squeeze(-1) + (P(uu) * Q(ii)).sum(-1)

    for _ in tqdm(range(epochs), desc="mf", disable=not progress, leave=False):
        for b in torch.randperm(len(r), generator=gen).split(batch_size):
            reg = (P(u[b]) ** 2).sum(-1) + (Q(i[b]) ** 2).sum(-1)
            loss = ((pred(u[b], i[b]) - r[b]) ** 2).mean() + weight_decay * reg.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    @torch.no_grad()
    def predict(pairs: list[tuple[str, str]]) -> np.ndarray:
        out = np.empty(len(pairs))
        for k, (uid, iid) in enumerate(pairs):
            v = mu
            a, c = uix.get(uid), iix.get(iid)
            if a is not None:
                v += float(bu.weight[a])
            if c is not None:
                v += float(bi.weight[c])
            if a is not None and c is not None:
                v += float(P.weight[a] @ Q.weight[c])
            out[k] = min(hi, max(lo, v))
        return out

    return predict


# ----------------------------------------------------------------------------------------------
# running everything


@dataclass
class BaselineConfig:
    """Options of `python -m p5x.baselines` (see --help for each)."""

    part: str = "test"
    tasks: tuple[str, ...] = TASKS
    seed: int = 0
    epochs: int = 200
    device: str = "cpu"
    dim: int = 64
    layers: int = 2
    dropout: float = 0.5
    mf_epochs: int = 100
    exclude_history: bool = False
    progress: bool = True
    max_users: int | None = None  # score only the first N evaluated users (sorted ids), as p5x.evaluate
    models: tuple[str, ...] = RANKERS  # which sequential / direct baselines to run
    by_history: bool = False  # sequential full ranking also per history-length group (p5x.metrics)
    content_prior: float | None = None  # W: also rank each PRIOR_RANKERS model's log-prob + W x p5x.content's prior


def _row(model, task, protocol, metrics, **extra):
    return {"model": model, "task": task, "protocol": protocol, "templates": "-", "metrics": metrics, **extra}


def run_baselines(ds: Dataset, cfg: BaselineConfig) -> list[dict]:
    """Every baseline for every requested task; rows in p5x.metrics.format_table's format."""
    split = time_split(ds)
    item_ids = list(ds.items)
    users = split.eval_users(cfg.part, cfg.max_users)
    if not users:
        raise ConfigError(f"no user has a {cfg.part} interaction (every user has fewer than 3)")
    hist = _histories(split, users, cfg.part)
    targets = [split.target(u, cfg.part).item_id for u in users]
    rows: list[dict] = []
    bad = [m for m in cfg.models if m not in RANKERS + EXTRA_RANKERS]
    if bad or not cfg.models:
        raise ConfigError(f"--models: unknown baseline(s) {bad} (choose from {', '.join(RANKERS + EXTRA_RANKERS)})")
    needs_sasrec = ("sequential" in cfg.tasks or "direct" in cfg.tasks) and "sasrec" in cfg.models
    sas = None
    if needs_sasrec:
        sas = train_sasrec(split, item_ids, "ce", cfg.dim, cfg.layers, 2, 50, cfg.dropout, cfg.epochs,
                           seed=cfg.seed, device=cfg.device, progress=cfg.progress)
    pop = popularity_scores(split, item_ids)
    trans = TransitionScorer(split, item_ids) if "transition" in cfg.models else None
    fit_dev = cfg.device if cfg.device == "cuda" else None  # the CPU path keeps ARPACK for cooc
    factor = {m: FactorScorer(split, item_ids, cfg.dim, m, cfg.seed, fit_dev, cfg.progress)
              for m in EXTRA_RANKERS if m in cfg.models and m != "content"}
    if "content" in cfg.models:
        factor["content"] = ContentScorer(ds, split, item_ids)
    mixed = _with_content(ds, split, item_ids, cfg, trans, factor, lambda h: score_sasrec(sas, h))
    full = "full ranking" + (" (history excluded)" if cfg.exclude_history else "")
    if "sequential" in cfg.tasks:
        pop_t = torch.from_numpy(pop)
        scorers = (("popularity", lambda h: pop_t.expand(len(h), -1)), ("transition", trans),
                   ("sasrec", lambda h: score_sasrec(sas, h))) + tuple(factor.items())
        for name, fn in [(n, f) for n, f in scorers if n in cfg.models] + mixed:
            ranked = _full_rank(fn, hist, item_ids, max(SEQ_KS), cfg.exclude_history)
            rows.append(_row(name, "sequential", full, M.ranking_metrics(ranked, targets, SEQ_KS)))
            if cfg.by_history:
                groups = M.ranking_metrics_by_group(ranked, targets, [M.history_group(len(h)) for h in hist],
                                                    SEQ_KS, order=M.HISTORY_LABELS)
                rows += [_row(name, "sequential", M.history_groups_protocol(full, label, n), m, n=n)
                         for label, n, m in groups]
    if "direct" in cfg.tasks:
        # exactly the candidate lists the model's pick-from-candidates prompts show (p5x.tasks);
        # a catalogue too small for 99 negatives per user gets fewer, and the label says how many
        from .tasks import eval_candidates, make_context

        ctx = make_context(ds, seed=cfg.seed)
        cands = [eval_candidates(ctx, u, cfg.part) for u in users]
        n = min(len(c) for c in cands)
        if n < 2:
            raise ConfigError("direct: some user has interacted with every item; no negatives to sample")
        # equal-length lists for the score matrix: keep the target and the first n-1 negatives
        cands = [c if len(c) == n else [i for i in c if i != t][: n - 1] + [t] for c, t in zip(cands, targets)]
        n_neg = n - 1
        pos = {iid: j for j, iid in enumerate(item_ids)}
        counts = popularity_counts(split, item_ids)  # raw counts: ties get the seeded shuffle
        pop_c = np.array([[counts[pos[i]] for i in c] for c in cands])
        scorers = (("popularity", lambda: pop_c), ("transition", lambda: trans.candidate_scores(hist, cands)),
                   ("sasrec", lambda: score_sasrec(sas, hist, cands))) + tuple(
            (m, lambda f=f: f.candidate_scores(hist, cands)) for m, f in factor.items())
        for name, sc in [(n, f()) for n, f in scorers if n in cfg.models]:
            ranked = _rank_candidates(sc, cands, cfg.seed)
            rows.append(_row(name, "direct", f"sampled 1-of-{n_neg + 1}",
                             M.ranking_metrics(ranked, targets, DIRECT_KS, DIRECT_NDCG_KS)))
        if "sasrec" in cfg.models:
            rows += _yes_no_rows(ds, split, item_ids, users, hist, cfg)
    if "rating" in cfg.tasks:
        rows += _rating_rows(split, cfg, set(users))
    return rows


def content_row_name(model: str, weight: float) -> str:
    return f"{model} + {weight:g} x content prior"


def _with_content(ds, split, item_ids, cfg, trans, factor, sasrec_scores) -> list[tuple]:
    """(row name, score function) for each requested PRIOR_RANKERS model with --content-prior: its
    next-item log-probability + W x p5x.content's prior, popularity ordering exact ties (module doc)."""
    if not cfg.content_prior:
        return []
    from .content import ContentPrior

    prior = ContentPrior(ds, item_ids)
    w = float(cfg.content_prior)
    tie = popularity_tiebreak(split, item_ids, 1e-9)
    log_pop = torch.from_numpy(np.log(popularity_probs(split, item_ids)))
    base = {"popularity": lambda h: log_pop.expand(len(h), -1),
            "transition": lambda h: trans.log_probs(h),
            "sasrec": lambda h: torch.log_softmax(torch.from_numpy(sasrec_scores(h)).double(), dim=1)}
    base.update({m: f.log_probs for m, f in factor.items() if m in ("markov", "markov-untied")})
    return [(content_row_name(m, w), lambda h, b=base[m]: b(h) + w * torch.from_numpy(prior.scores(h)).double() + tie)
            for m in PRIOR_RANKERS if m in cfg.models]


def _yes_no_rows(ds, split, item_ids, users, hist, cfg) -> list[dict]:
    """sasrec-sigmoid P(like) against liked = rating > 3 on the evaluated records (AUC)."""
    recs = [split.target(u, cfg.part) for u in users]
    keep = [k for k, x in enumerate(recs) if x.rating is not None]
    labels = [float(recs[k].rating > 3) for k in keep]
    if len(set(labels)) < 2:
        return []  # AUC is undefined without both liked and disliked records
    model = train_sasrec(split, item_ids, "sigmoid", cfg.dim, cfg.layers, 2, 50, cfg.dropout, cfg.epochs,
                         seed=cfg.seed, device=cfg.device, progress=cfg.progress)
    p = score_sasrec(model, [hist[k] for k in keep], [[recs[k].item_id] for k in keep])[:, 0]
    return [_row("sasrec-sigmoid", "direct yes/no (liked = rating > 3)", "-", {"AUC": M.auc(labels, p)})]


def _rating_rows(split, cfg, users: set[str]) -> list[dict]:
    train = rating_train_records(split, cfg.part)
    evals = [x for x in rating_eval_records(split, cfg.part) if x.user_id in users]
    if not train or not evals:
        return []  # a dataset without ratings has no rating task
    true = [x.rating for x in evals]
    mu = global_mean(train)
    um = user_means(train)
    mf = train_mf(train, epochs=cfg.mf_epochs, seed=cfg.seed, progress=cfg.progress)
    preds = {
        "global mean": [mu] * len(evals),
        "user mean": [um.get(x.user_id, mu) for x in evals],
        "mf": mf([(x.user_id, x.item_id) for x in evals]),
    }
    return [_row(name, "rating", "-", {"RMSE": M.rmse(p, true), "MAE": M.mae(p, true)})
            for name, p in preds.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m p5x.baselines", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="normalized dataset directory (p5x.schema)")
    ap.add_argument("--split", default="test", choices=("test", "valid"), help="which held-out part to score")
    ap.add_argument("--tasks", default="sequential,direct,rating", help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--models", default=",".join(RANKERS),
                    help="sequential/direct baselines to run, comma list of " + ", ".join(RANKERS + EXTRA_RANKERS)
                         + " (sasrec is slow, and markov on a CPU: minutes on Beauty; cooc, the co-occurrence vectors that train.py "
                         "--item-init cooc starts from, and markov / markov-untied, the next-item models "
                         "--item-init markov / markov-untied fit, and content, the text prior p5x.evaluate "
                         "--content-prior adds, run only when named; rating always runs its three)")
    ap.add_argument("--out", help="directory for metrics.json and metrics.md (printed only when absent)")
    ap.add_argument("--seed", type=int, default=0, help="seed for training and negative sampling")
    ap.add_argument("--epochs", type=int, default=200, help="SASRec training epochs")
    ap.add_argument("--mf-epochs", type=int, default=100, help="matrix factorisation epochs")
    ap.add_argument("--dim", type=int, default=64, help="SASRec hidden size (and cooc's and markov's vector size)")
    ap.add_argument("--layers", type=int, default=2, help="SASRec transformer blocks")
    ap.add_argument("--dropout", type=float, default=0.5, help="SASRec dropout (0.5 suits sparse Amazon data)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where SASRec trains and the cooc / markov vectors are computed")
    ap.add_argument("--exclude-history", action="store_true",
                    help="sequential: drop the user's history items from the full ranking (off by default)")
    ap.add_argument("--by-history", action="store_true",
                    help="sequential: also report the users of each history length apart (0, 1-3, 4-5, 6-10, "
                         "11-20, 21+ items), as p5x.evaluate --by-history")
    ap.add_argument("--content-prior", type=float, default=None, metavar="W",
                    help="sequential: also rank popularity, transition, sasrec, markov and markov-untied (those "
                         "asked for in --models) by their next-item log-probability + W x the content prior "
                         "p5x.evaluate --content-prior adds (item metadata; one more row each); off by default")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for torch (0: torch's default; 1 is far faster on a busy shared CPU)")
    ap.add_argument("--max-users", type=int, default=None,
                    help="score only the first N evaluated users by sorted id (the users p5x.evaluate "
                         "--max-users N scores); training still uses every user's training part")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks:
            raise ConfigError(f"--tasks: unknown task(s) {bad} (choose from {', '.join(TASKS)})")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device available")
        cfg = BaselineConfig(args.split, tasks, args.seed, args.epochs, args.device, args.dim, args.layers,
                             args.dropout, args.mf_epochs, args.exclude_history, not args.no_progress,
                             args.max_users, tuple(m.strip() for m in args.models.split(",") if m.strip()),
                             args.by_history, args.content_prior)
        from .content import check_prior_settings

        check_prior_settings(args.content_prior)
        if args.max_users is not None and args.max_users < 1:
            raise ConfigError(f"--max-users: expected >= 1, got {args.max_users}")
        if args.threads < 0:
            raise ConfigError(f"--threads: expected >= 0, got {args.threads}")
        if args.threads:
            torch.set_num_threads(args.threads)
        ds = load_dataset(args.data)
        rows = run_baselines(ds, cfg)
        print(M.format_table(rows), end="")
        if args.out:
            meta = {"split": args.split, "indexing": "-", "templates": "-", "seed": args.seed,
                    "data_hash": ds.data_hash, "data": str(Path(args.data).resolve()),
                    "device": M.device_name(args.device), "tasks": list(tasks), "max_users": args.max_users,
                    "config": {k: getattr(cfg, k) for k in ("epochs", "dim", "layers", "dropout", "mf_epochs",
                                                            "exclude_history", "models", "by_history", "content_prior")}}
            M.write_results(Path(args.out) / "metrics.json", rows, meta)
            print(f"wrote {Path(args.out) / 'metrics.json'}", file=sys.stderr)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
