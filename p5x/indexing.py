"""Item and user indexing: how a raw id becomes the text pieces a model reads and writes.

Every id is a tuple of pieces `<{kind}{level}_{value}>` (kind "i" for items, "u" for users), and its
text is the pieces joined with no spaces, e.g. `<i0_3><i1_0><i2_7>`. Tokenizers register every
piece as one atomic token, so an id tokenizes identically wherever it stands in a sentence.

Four item indexings (see docs/DESIGN.md, "Evaluation protocol" 1):

- random (default): a seeded permutation numbers the items 0..N-1; a number is written as
  ID_LEVELS (3) digits in base b, the smallest base with b**3 >= N (Beauty: 23), digit at
  position L -> piece `<i{L}_{digit}>`; so every id is three tokens.
- sequential: numbers handed out in order of first appearance along TRAINING histories only, with
  users visited in a seeded random order; items absent from training get the remaining numbers in a
  seeded random order. Numbering along all interactions in file order (as P5 did) puts a user's
  held-out item right after their history's largest number; this one cannot see held-out items.
- collaborative: recursive spectral clustering of the item co-occurrence graph of the training
  histories (two items co-occur when one user has both in training). A node with more than k items
  is split into k clusters, the piece at level L is the cluster number at that level, and a node
  with <= k items numbers its items at one last level. Codes may differ in length; each code ends
  at a leaf, so no code is a prefix of another. Items without training edges are set apart in a
  cluster of their own at each level, and nodes too small or degenerate for spectral clustering are
  cut into equal chunks in a seeded order.

- atomic: the random numbering written as one piece `<i0_{n}>` per item, so each item is a
  single token with an embedding of its own (N new tokens; SASRec's item table, in effect), and a
  100-candidate prompt needs ~100 id tokens instead of ~300.

Users are indexed with the random method only (pieces `<u{L}_{digit}>`).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CheckpointError, ConfigError, close_matches
from .paths import atomic_output
from .schema import Dataset
from .split import Split

METHODS = ("random", "sequential", "collaborative", "atomic")
PIECE_RE = re.compile(r"<([iu])(\d+)_(\d+)>")
FORMAT = "p5x-id-index"


@dataclass
class ItemIndex:
    """raw id -> pieces, for items (kind="item") or users (kind="user")."""

    kind: str
    method: str
    seed: int
    codes: dict[str, tuple[str, ...]]
    _by_text: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.codes = {str(k): tuple(v) for k, v in self.codes.items()}
        self._by_text = {}
        for raw, pieces in self.codes.items():
            t = "".join(pieces)
            if not pieces or t in self._by_text:
                raise ConfigError(f"{self.kind} index: code {t!r} of {raw!r} is empty or duplicated")
            self._by_text[t] = raw

    def __len__(self) -> int:
        return len(self.codes)

    def __contains__(self, raw_id) -> bool:
        return raw_id in self.codes

    def text(self, raw_id: str) -> str:
        """The id as it appears in prompts and targets."""
        try:
            return "".join(self.codes[raw_id])
        except KeyError:
            raise KeyError(f"{self.kind} {raw_id!r} is not in the {self.method} index") from None

    def lookup(self, text: str) -> str | None:
        """Inverse of text(): the raw id, or None when `text` is not exactly one id."""
        return self._by_text.get(text.strip())

    def pieces(self) -> list[str]:
        """Every distinct piece, sorted by (level, value): the tokens a tokenizer must register."""
        seen = {p for code in self.codes.values() for p in code}
        return sorted(seen, key=lambda p: tuple(int(x) for x in PIECE_RE.fullmatch(p).groups()[1:]))

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "kind": self.kind, "method": self.method,
                "seed": self.seed, "codes": {k: list(v) for k, v in self.codes.items()}}

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (temp file in the same folder, then rename)."""
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ItemIndex":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: file not found") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CheckpointError(f"{path}: field 'format': not a p5x id index")
        letter = "u" if d.get("kind") == "user" else "i"
        codes = d.get("codes")
        if not isinstance(codes, dict):
            raise CheckpointError(f"{path}: field 'codes': expected an object")
        for raw, pieces in codes.items():
            if not isinstance(pieces, list) or not all(
                    isinstance(p, str) and (m := PIECE_RE.fullmatch(p)) and m.group(1) == letter
                    for p in pieces):
                raise CheckpointError(f"{path}: field 'codes': bad code for {raw!r}: {pieces!r}")
        try:
            return cls(d["kind"], d["method"], int(d["seed"]), codes)
        except (KeyError, ValueError, ConfigError) as e:
            raise CheckpointError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------------------
# numbered indexings (random, sequential, users)


ID_LEVELS = 3  # pieces per numbered id: 100 candidate ids must fit a 512-token prompt


def digit_base(n: int, levels: int = ID_LEVELS) -> int:
    """The smallest base b >= 2 with b**levels >= n: numbers 0..n-1 fit in `levels` digits."""
    b = 2
    while b ** levels < n:
        b += 1
    return b


def number_of(pieces, base: int) -> int:
    """Inverse of _digits for one code: the number its base-`base` digits spell."""
    n = 0
    for p in pieces:
        n = n * base + int(PIECE_RE.fullmatch(p).group(3))
    return n


def _digits(numbers: dict[str, int], letter: str,
            levels: int = ID_LEVELS) -> dict[str, tuple[str, ...]]:
    """Write each number as `levels` base-b digits (b from the catalogue size), one piece per digit.

    Decimal digits would give Beauty's 12,101 items five pieces each, and a 100-candidate prompt
    ~600 tokens; three base-23 digits keep it near 400 with the same id for every sentence.
    levels=1 makes every id one token of its own (`atomic`).
    """
    base = digit_base(len(numbers), levels)
    out = {}
    for raw, n in numbers.items():
        digits = []
        for _ in range(levels):
            n, d = divmod(n, base)
            digits.append(d)
        out[raw] = tuple(f"<{letter}{pos}_{d}>" for pos, d in enumerate(reversed(digits)))
    return out


def _random_numbers(ids: list[str], seed: int) -> dict[str, int]:
    perm = np.random.default_rng(seed).permutation(len(ids))
    return {raw: int(n) for raw, n in zip(sorted(ids), perm)}


def _sequential_numbers(ds: Dataset, split: Split, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    users = sorted(split.train)
    numbers: dict[str, int] = {}
    for ui in rng.permutation(len(users)):
        for x in split.train[users[ui]]:  # time order within a user
            if x.item_id not in numbers:
                numbers[x.item_id] = len(numbers)
    rest = sorted(set(ds.items) - set(numbers))
    for i in rng.permutation(len(rest)):
        numbers[rest[i]] = len(numbers)
    return numbers


# ----------------------------------------------------------------------------------------------
# collaborative indexing


def cooccurrence(item_ids: list[str], split: Split):
    """Sparse symmetric item x item count of users holding both items in training (no diagonal)."""
    import scipy.sparse as sp

    pos = {iid: k for k, iid in enumerate(item_ids)}
    rows, cols = [], []
    for u, xs in enumerate(split.train.values()):
        for x in {x.item_id for x in xs}:
            rows.append(u)
            cols.append(pos[x])
    ui = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(split.train), len(item_ids)))
    a = (ui.T @ ui).tocsr()
    a.setdiag(0)
    a.eliminate_zeros()
    return a


def _chunks(members: np.ndarray, k: int, rng) -> list[np.ndarray]:
    """The cheap fallback: members cut into <= k nearly equal chunks, in a seeded order."""
    order = members[rng.permutation(len(members))]
    return [c for c in np.array_split(order, min(k, len(members))) if len(c)]


def _split_node(members: np.ndarray, a, k: int, rng, seed: int) -> list[np.ndarray]:
    """Cut one node (> k items) into at most k non-empty groups."""
    from sklearn.cluster import SpectralClustering

    sub = a[members][:, members]
    degree = np.asarray(sub.sum(axis=1)).ravel()
    iso, conn = members[degree == 0], members[degree > 0]
    n_conn = k - 1 if len(iso) else k
    groups: list[np.ndarray] = []
    if len(conn) > 2 * n_conn:  # spectral clustering needs a graph of some size to mean anything; lobpcg, not
        # the default arpack shift-invert, which takes minutes on 12k items (lobpcg: ~1 s)
        sc = SpectralClustering(n_clusters=n_conn, affinity="precomputed", random_state=seed,
                                assign_labels="cluster_qr", eigen_solver="lobpcg")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "graph is not fully connected" is expected here
            try:
                labels = sc.fit_predict(sub[degree > 0][:, degree > 0])
            except Exception:  # noqa: BLE001 - eigen-solver failure: use the cheap method
                labels = None
        if labels is not None:
            groups = [conn[labels == c] for c in range(n_conn) if np.any(labels == c)]
        if len(groups) < 2:
            groups = []
    if not groups:
        groups = _chunks(conn, n_conn, rng) if len(conn) else []
    if len(iso):
        groups.append(iso)
    if len(groups) < 2:  # no progress (e.g. everything isolated): cut evenly
        groups = _chunks(members, k, rng)
    return groups


def _collaborative_codes(item_ids: list[str], split: Split, seed: int, k: int):
    a = cooccurrence(item_ids, split)
    rng = np.random.default_rng(seed)
    codes: dict[str, tuple[str, ...]] = {}
    stack = [(np.arange(len(item_ids)), ())]
    while stack:
        members, path = stack.pop()
        level = len(path)
        if len(members) <= k:  # a leaf: number its items at one last level
            for p, m in enumerate(sorted(members, key=lambda m: item_ids[m])):
                codes[item_ids[m]] = path + (f"<i{level}_{p}>",)
            continue
        for c, g in enumerate(_split_node(members, a, k, rng, seed)):
            stack.append((g, path + (f"<i{level}_{c}>",)))
    return codes


# ----------------------------------------------------------------------------------------------
# entry points


def build_index(ds: Dataset, split: Split, method: str = "random", seed: int = 0, *,
                n_clusters: int = 16) -> ItemIndex:
    """Index every catalogue item of `ds` (items never interacted with included)."""
    ids = list(ds.items)
    if method == "random":
        codes = _digits(_random_numbers(ids, seed), "i")
    elif method == "sequential":
        codes = _digits(_sequential_numbers(ds, split, seed), "i")
    elif method == "atomic":
        codes = _digits(_random_numbers(ids, seed), "i", levels=1)
    elif method == "collaborative":
        if n_clusters < 2:
            raise ConfigError(f"n_clusters must be at least 2, got {n_clusters}")
        codes = _collaborative_codes(sorted(ids), split, seed, n_clusters)
    else:
        raise ConfigError(f"unknown indexing method {method!r}; choose from {', '.join(METHODS)}"
                          + close_matches(method, METHODS))
    return ItemIndex("item", method, seed, {i: codes[i] for i in ids})


def build_user_index(ds: Dataset, seed: int = 0) -> ItemIndex:
    """Users numbered by a seeded permutation, written as `<u{L}_{digit}>` pieces."""
    return ItemIndex("user", "random", seed, _digits(_random_numbers(list(ds.users), seed), "u"))
