"""Constrained decoding over the item catalogue: a prefix trie held as tensors and a LogitsProcessor.

Every item id is a short token sequence (what `Featurizer.encode_target(index.text(item))` gives,
ending in eos). `ItemTrie` stores the trie of those sequences as flat tensors:

    edge_key[e]   = parent_node * vocab_size + token      (sorted ascending)
    edge_child[e] = child node reached by that edge
    child_ptr[v]  = start of node v's edges in the sorted arrays (CSR: v's edges are ptr[v]:ptr[v+1])

so that one step for all rows at once is a `searchsorted` (advance) and either a sparse list of
allowed (row, token) pairs (allowed_pairs: few children per row, deep in a multi-token id) or a
dense [rows, vocab] mask built once per distinct state and gathered to the rows (allowed_mask: many
children, e.g. the root of a one-token catalogue, where every beam may take any of 12k items): no
Python loop over batch x beams either way. TrieLogitsProcessor picks between the two per step.

States are node ids. Node 0 is the root. The node reached after an item's eos is a leaf: a row
there has finished a real item and may only produce pad afterwards (eos when there is no pad id).
DEAD (-1) marks a row whose prefix left the trie (only possible if something else forced a token):
it may only produce eos. Under the mask no row ever leaves the trie, so every sequence that ends
is a real item.

`ItemTrie.constrain` masks one step's scores; p5x.inference.trie_beams (p5x's own beam search, what
p5x.evaluate runs) calls it with the states it carries along. `TrieLogitsProcessor` applies the
same mask inside HF's `generate`, recovering the states from the tokens; `make_prefix_allowed_tokens_fn`
is the same constraint as HF's slow per-row Python callback, kept as the reference for tests and
the bench.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

DEAD = -1
# above this many rows the [rows, rows] prefix-matching cache costs more than re-walking the prefix
_MATCH_MAX_ROWS = 4096
# a step builds a dense [rows, vocab] mask (one row per distinct state, gathered) rather than a list
# of (row, token) pairs once the pairs fill more than 1/_DENSE_RATIO of that matrix: measured on CPU,
# a pair costs ~20x a mask cell, and at the root of a one-token catalogue the pair list is
# beams x items long (bench/RESULTS.md, session 21, "ranking one-token ids 4.5x faster")
_DENSE_RATIO = 16


class ItemTrie:
    """Prefix trie over item token sequences, as tensors. See the module docstring for the layout."""

    def __init__(self, sequences: list[list[int]], eos_id: int, vocab_size: int, pad_id: int | None = None,
                 names: Sequence[str] | None = None):
        """`names` (optional, parallel to `sequences`): what each item is called outside the trie (the
        raw item id), so that `exclusion` can be given items by name."""
        if not sequences:
            raise ValueError("ItemTrie needs at least one item sequence")
        self.eos_id, self.vocab_size, self.pad_id = int(eos_id), int(vocab_size), pad_id
        # build once with Python dicts (catalogue-sized, not per step), then freeze into tensors
        if names is not None and len(names) != len(sequences):
            raise ValueError(f"ItemTrie got {len(names)} names for {len(sequences)} sequences")
        children: list[dict[int, int]] = [{}]
        depth, parent, in_token = [0], [-1], [-1]
        items: set[tuple[int, ...]] = set()
        self._leaf_of_name: dict[str, int] = {}
        self._name_of_token: dict[int, object] = {}  # one-token items (token, eos): token -> name
        self._root_mask: torch.Tensor | None = None
        for k, seq in enumerate(sequences):
            seq = [int(t) for t in seq]
            if not seq or seq[-1] != self.eos_id:
                raise ValueError(f"item sequence {k} does not end in eos ({self.eos_id}): {seq}")
            if self.eos_id in seq[:-1]:
                raise ValueError(f"item sequence {k} has eos before its end: {seq}")
            if any(t < 0 or t >= self.vocab_size for t in seq):
                raise ValueError(f"item sequence {k} has a token outside the vocabulary: {seq}")
            items.add(tuple(seq))
            node = 0
            for t in seq:
                nxt = children[node].get(t)
                if nxt is None:
                    nxt = len(children)
                    children[node][t] = nxt
                    children.append({})
                    depth.append(depth[node] + 1)
                    parent.append(node)
                    in_token.append(t)
                node = nxt
            if names is not None:
                self._leaf_of_name[str(names[k])] = node
                if len(seq) == 2:
                    self._name_of_token[seq[0]] = names[k]
        self.num_items = len(items)
        # per node: its parent, the token on the edge into it, and how many items end below it
        self._parent, self._in_token = parent, in_token
        leaves = [0] * len(children)
        for v in range(len(children) - 1, 0, -1):  # children always come after their parent
            if not children[v]:
                leaves[v] = 1
            leaves[parent[v]] += leaves[v]
        self._leaves_under = leaves
        self.num_nodes = len(children)
        self._items = items
        keys, kids, ptr = [], [], [0]
        for v, ch in enumerate(children):
            for t in sorted(ch):
                keys.append(v * self.vocab_size + t)
                kids.append(ch[t])
            ptr.append(len(keys))
        self.edge_key = torch.tensor(keys, dtype=torch.long)
        self.edge_child = torch.tensor(kids, dtype=torch.long)
        self.edge_token = self.edge_key % self.vocab_size
        self.child_ptr = torch.tensor(ptr, dtype=torch.long)
        # the same CSR arrays as numpy, for `restriction`'s per-group set arithmetic on the CPU
        self._np_ptr = np.asarray(ptr, dtype=np.int64)
        self._np_child = np.asarray(kids, dtype=np.int64)
        self._np_token = np.asarray(keys, dtype=np.int64) % self.vocab_size
        self.is_leaf = self.child_ptr[1:] == self.child_ptr[:-1]
        self.depth = torch.tensor(depth, dtype=torch.long)
        self.max_len = max(len(s) for s in items)
        # what a finished row may emit next: pad when the model has one, else eos again
        self.after_end = self.eos_id if pad_id is None else int(pad_id)

    @property
    def device(self) -> torch.device:
        return self.edge_key.device

    def to(self, device) -> "ItemTrie":
        """Move the tensors to `device` (in place) and return self."""
        for name in ("edge_key", "edge_child", "edge_token", "child_ptr", "is_leaf", "depth"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def root_states(self, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long, device=self.device)

    def root_mask(self) -> torch.Tensor:
        """`allowed_mask` at the root ([1, vocab]: every item's first token), built once per device."""
        if self._root_mask is None or self._root_mask.device != self.device:
            self._root_mask = self.allowed_mask(self.root_states(1))
        return self._root_mask

    def names_of_tokens(self, tokens: Sequence[int]) -> list | None:
        """The names of one-token items (an item that is `token`, eos) for each of `tokens`, None for a
        token that is no such item; None altogether when the trie was built without names."""
        if not self._name_of_token:
            return None
        return [self._name_of_token.get(t) for t in tokens]

    def tokens_of_names(self, names: Sequence) -> list[int | None]:
        """The token of each named one-token item (None for a name that is no such item)."""
        if not hasattr(self, "_token_of_name"):
            self._token_of_name = {v: k for k, v in self._name_of_token.items()}
        return [self._token_of_name.get(n) for n in names]

    def contains(self, seq) -> bool:
        """Whether `seq` (ending in eos) is exactly one item's sequence."""
        return tuple(int(t) for t in seq) in self._items

    def sequences(self) -> list[list[int]]:
        """The distinct item sequences (sorted), e.g. to rebuild a Python-side trie."""
        return [list(s) for s in sorted(self._items)]

    def advance(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next state of every row after emitting `tokens` ([n] each), vectorised."""
        states = states.to(self.device)
        tokens = tokens.to(self.device).long()
        live = states >= 0
        key = states.clamp(min=0) * self.vocab_size + tokens
        pos = torch.searchsorted(self.edge_key, key).clamp(max=self.edge_key.numel() - 1)
        found = live & (self.edge_key[pos] == key)
        nxt = torch.where(found, self.edge_child[pos], torch.full_like(states, DEAD))
        # a finished item stays finished while it is padded out
        stay = live & self.is_leaf[states.clamp(min=0)] & ((tokens == self.after_end) | (tokens == self.eos_id))
        return torch.where(stay, states, nxt)

    def walk(self, prefixes: torch.Tensor) -> torch.Tensor:
        """States after feeding each row of `prefixes` ([n, t]) from the root."""
        states = self.root_states(prefixes.shape[0])
        for j in range(prefixes.shape[1]):
            states = self.advance(states, prefixes[:, j])
        return states

    def pair_count(self, states: torch.Tensor) -> int:
        """How many (row, token) pairs `allowed_pairs(states)` returns, without building them."""
        states = states.to(self.device)
        s = states.clamp(min=0)
        counts = torch.where(states >= 0, self.child_ptr[s + 1] - self.child_ptr[s], torch.zeros_like(s))
        return int(counts.sum()) + states.shape[0]

    def allowed_pairs(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, tokens): every allowed (row, next token) pair, vectorised over rows (sparse form
        of allowed_mask: a step touches only these entries, not a dense [n, vocab] mask)."""
        states = states.to(self.device)
        n = states.shape[0]
        live = states >= 0
        s = states.clamp(min=0)
        start, stop = self.child_ptr[s], self.child_ptr[s + 1]
        counts = torch.where(live, stop - start, torch.zeros_like(start))
        total = int(counts.sum())
        arange_n = torch.arange(n, device=self.device)
        rows = torch.repeat_interleave(arange_n, counts, output_size=total)  # no 2nd sync
        # edge index = row's first edge + offset within the row's run
        run_start = torch.cumsum(counts, 0) - counts
        offs = torch.arange(total, device=self.device)
        offs = offs - torch.repeat_interleave(run_start, counts, output_size=total)
        toks = self.edge_token[torch.repeat_interleave(start, counts, output_size=total) + offs]
        # one more pair per row (no boolean indexing, so no GPU sync): finished rows may only pad,
        # rows that left the trie may only end, other rows repeat their first child (harmless)
        leaf = live & self.is_leaf[s]
        first = self.edge_token[start.clamp(max=self.edge_token.numel() - 1)]
        extra_toks = torch.where(leaf, torch.full_like(first, self.after_end),
                                 torch.where(live, first, torch.full_like(first, self.eos_id)))
        extra_rows = arange_n
        return torch.cat([rows, extra_rows]), torch.cat([toks, extra_toks])

    def allowed_mask(self, states: torch.Tensor) -> torch.Tensor:
        """Bool [n, vocab]: which tokens each row may emit next, vectorised over rows.

        Rows in the same state share one mask row: the pairs are built for the distinct states only
        and gathered back, so a step where every beam sits at the root (the first token of every
        item) costs one catalogue-wide row, not one per beam."""
        states = states.to(self.device)
        uniq, inv = torch.unique(states, return_inverse=True)
        rows, toks = self.allowed_pairs(uniq)
        mask = torch.zeros(uniq.shape[0], self.vocab_size, dtype=torch.bool, device=self.device)
        mask[rows, toks] = True
        return mask[inv]

    def constrain(self, scores: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """A copy of `scores` ([rows, width]) with -inf wherever the trie forbids the token to the row
        in `states`: what p5x.inference.trie_beams and TrieLogitsProcessor apply at every step."""
        width = scores.shape[1]
        if self.pair_count(states) * _DENSE_RATIO > states.shape[0] * self.vocab_size:
            # many allowed tokens per row (the root of a catalogue of one-token ids: every beam may
            # take any of the 12k items): one mask row per distinct state, gathered to the rows
            return scores.masked_fill(~fit_width(self.allowed_mask(states), width), float("-inf"))
        # few allowed tokens per row: one dense fill plus a sparse copy of the allowed entries
        rows, toks = self.allowed_pairs(states)
        if self.vocab_size > width:
            keep = toks < width
            rows, toks = rows[keep], toks[keep]
        out = torch.full_like(scores, float("-inf"))
        out[rows, toks] = scores[rows, toks]
        return out

    def count_named(self, names: Iterable[str]) -> int:
        """How many distinct catalogue items `names` picks out (names the trie does not hold count 0)."""
        return len({self._leaf_of_name.get(str(n)) for n in names} - {None})

    def exclusion(self, banned: Sequence[Iterable[str]]) -> "Exclusion":
        """Items each group of rows may not produce (`banned[g]`: names, e.g. a user's history), as
        the trie edges to cut for that group: the edge into every node all of whose items are banned,
        where its parent still has an allowed item. Cutting them makes constrained decoding for group
        g the same as decoding over a trie built without g's banned items (no beam is spent on a
        prefix that can only end in a banned item). Names the trie does not hold are ignored. Names
        that share one token sequence share its leaf, so excluding one excludes them all (decoding
        cannot tell them apart either: the decoded text maps back to one name)."""
        if banned and not self._leaf_of_name:
            raise ValueError("this ItemTrie was built without names: exclusion needs them")
        keys, toks = [], []
        for g, names in enumerate(banned):
            count: dict[int, int] = {}
            for v in {self._leaf_of_name.get(str(name)) for name in names} - {None}:
                while v > 0:
                    count[v] = count.get(v, 0) + 1
                    v = self._parent[v]
            for v, c in count.items():
                p = self._parent[v]
                if c == self._leaves_under[v] and (p == 0 or count.get(p, 0) < self._leaves_under[p]):
                    keys.append(g * self.num_nodes + p)
                    toks.append(self._in_token[v])
        key = torch.tensor(keys, dtype=torch.long)
        order = key.argsort()
        return Exclusion(key[order].to(self.device), torch.tensor(toks, dtype=torch.long)[order].to(self.device),
                         self.num_nodes)

    def restriction(self, allowed: Sequence[Iterable[str]]) -> "Exclusion":
        """The opposite of `exclusion`: each group g of rows may produce only the items `allowed[g]`
        (names, e.g. the candidate list a prompt offers). Cut are the edges out of every node on the
        path to an allowed item that lead to no allowed item, so decoding for group g is decoding
        over a trie built from g's allowed items alone. Names the trie does not hold are ignored; a
        group none of whose names it holds is left with nothing to produce (every root edge cut)."""
        if allowed and not self._leaf_of_name:
            raise ValueError("this ItemTrie was built without names: a restriction needs them")
        keys, toks = [], []
        for g, names in enumerate(allowed):
            on_path = {0}
            for v in {self._leaf_of_name.get(str(name)) for name in names} - {None}:
                while v not in on_path:
                    on_path.add(v)
                    v = self._parent[v]
            nodes = np.fromiter(on_path, dtype=np.int64)
            keep = np.zeros(self.num_nodes, dtype=bool)
            keep[nodes] = True
            start, stop = self._np_ptr[nodes], self._np_ptr[nodes + 1]
            counts = stop - start
            edges = np.repeat(start - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            cut = ~keep[self._np_child[edges]]
            keys.append(g * self.num_nodes + np.repeat(nodes, counts)[cut])
            toks.append(self._np_token[edges][cut])
        key = torch.from_numpy(np.concatenate(keys)) if keys else torch.zeros(0, dtype=torch.long)
        tok = torch.from_numpy(np.concatenate(toks)) if toks else torch.zeros(0, dtype=torch.long)
        order = key.argsort()
        return Exclusion(key[order].to(self.device), tok[order].to(self.device), self.num_nodes)

    def mask_excluded(self, scores: torch.Tensor, exclusion: "Exclusion | None", states: torch.Tensor,
                      groups: torch.Tensor) -> torch.Tensor:
        """`scores` ([rows, width], changed in place and returned) with -inf wherever `exclusion`
        cuts an edge for a row in `states` whose group is `groups[row]`."""
        if exclusion is None or len(exclusion) == 0:
            return scores
        rows, toks = self.banned_pairs(exclusion, states, groups)
        keep = toks < scores.shape[1]
        scores[rows[keep], toks[keep]] = float("-inf")
        return scores

    def banned_pairs(self, exclusion: "Exclusion", states: torch.Tensor,
                     groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, tokens) that `exclusion` cuts for rows in `states` whose group is `groups[row]`."""
        states = states.to(self.device)
        ex = exclusion.to(self.device)
        key = groups.to(self.device).long() * self.num_nodes + states.clamp(min=0)
        lo = torch.searchsorted(ex.key, key)
        hi = torch.searchsorted(ex.key, key, right=True)
        counts = torch.where(states >= 0, hi - lo, torch.zeros_like(lo))
        total = int(counts.sum())
        rows = torch.repeat_interleave(torch.arange(states.shape[0], device=self.device), counts,
                                       output_size=total)
        offs = torch.arange(total, device=self.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts, output_size=total)
        return rows, ex.token[torch.repeat_interleave(lo, counts, output_size=total) + offs]


class Exclusion:
    """Trie edges cut per group of rows (ItemTrie.exclusion): `key` = group * num_nodes + parent node,
    sorted, with the cut edge's `token`."""

    def __init__(self, key: torch.Tensor, token: torch.Tensor, num_nodes: int):
        self.key, self.token, self.num_nodes = key, token, num_nodes

    def to(self, device) -> "Exclusion":
        if self.key.device != torch.device(device):
            self.key, self.token = self.key.to(device), self.token.to(device)
        return self

    def __len__(self) -> int:
        return int(self.key.numel())


def fit_width(mask: torch.Tensor, width: int) -> torch.Tensor:
    """An [n, trie vocab] mask cut or padded (with False) to the model's `width` output rows: the trie
    may count tokens the output layer does not have, and output rows past the trie's vocabulary are
    never items."""
    if mask.shape[1] > width:
        return mask[:, :width]
    if mask.shape[1] < width:
        return torch.nn.functional.pad(mask, (0, width - mask.shape[1]), value=False)
    return mask


class TrieLogitsProcessor(LogitsProcessor):
    """Sets every token the trie forbids to -inf, for all rows of a generate step at once.

    The generated part of a row is `input_ids[:, start:]` with start = prompt_len (+1 when the
    first generated position holds the decoder start token). For encoder-decoder models use
    prompt_len=0, decoder_start=True; for decoder-only models prompt_len = the (left-padded) prompt
    length, decoder_start=False; for decoder-only models generating from `inputs_embeds` (how
    whole-word embeddings reach a LLaMA), HF passes only the generated tokens: prompt_len=0,
    decoder_start=False. decoder_start=None means "True iff prompt_len == 0".

    Speed: beam search reorders rows between steps, so the previous step's states are re-used by
    matching each row's prefix (all but its last token) to a row of the previous step, then taking
    one trie step; rows without a match (or a fresh generate call) re-walk their whole prefix.
    """

    def __init__(self, trie: ItemTrie, prompt_len: int = 0, decoder_start: bool | None = None,
                 exclusion: Exclusion | None = None, group_size: int = 1):
        self.trie = trie
        # rows r*group_size .. (r+1)*group_size-1 belong to prompt r (beam search keeps a prompt's
        # beams together): exclusion's group r applies to them
        self.exclusion, self.group_size = exclusion, int(group_size)
        self.prompt_len = int(prompt_len)
        self.decoder_start = (self.prompt_len == 0) if decoder_start is None else bool(decoder_start)
        self.start = self.prompt_len + (1 if self.decoder_start else 0)
        self._prev_gen: torch.Tensor | None = None
        self._prev_states: torch.Tensor | None = None

    def reset(self):
        self._prev_gen = self._prev_states = None

    def states_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Trie state of every row of `input_ids`, using the previous call's cache when possible."""
        if self.trie.device != input_ids.device:
            self.trie.to(input_ids.device)
        gen = input_ids[:, self.start:]
        n, t = gen.shape
        prev = self._prev_gen
        if t == 0:
            states = self.trie.root_states(n)
        elif prev is not None and prev.shape == (n, t - 1) and n <= _MATCH_MAX_ROWS:
            head = gen[:, :-1]
            if t == 1:
                src = torch.zeros(n, dtype=torch.long, device=gen.device)
                ok = torch.ones(n, dtype=torch.bool, device=gen.device)
            elif torch.equal(head, prev):  # no reordering (greedy, sampling, or a lucky beam step)
                src = torch.arange(n, device=gen.device)
                ok = torch.ones(n, dtype=torch.bool, device=gen.device)
            else:
                same = (head[:, None, :] == prev[None, :, :]).all(-1)  # [n, n_prev]
                ok = same.any(1)
                src = same.to(torch.int8).argmax(1)
            states = self.trie.advance(self._prev_states[src], gen[:, -1])
            if not bool(ok.all()):
                bad = ~ok
                states[bad] = self.trie.walk(gen[bad])
        else:
            states = self.trie.walk(gen)
        # a copy: generate may reuse the buffer input_ids views
        self._prev_gen, self._prev_states = gen.clone(), states
        return states

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        states = self.states_for(input_ids)
        return self._exclude(states, self.trie.constrain(scores, states))

    def _exclude(self, states: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        groups = torch.arange(states.shape[0], device=states.device) // self.group_size
        return self.trie.mask_excluded(scores, self.exclusion, states, groups)


def make_prefix_allowed_tokens_fn(trie: ItemTrie, prompt_len: int = 0,
                                  decoder_start: bool | None = None) -> Callable[[int, torch.Tensor], list[int]]:
    """The same constraint as a `prefix_allowed_tokens_fn` for HF generate (slow reference path).

    A plain dict-of-dicts walk per row, as P5/OpenP5 do it; tests check it matches the tensor trie.
    """
    root: dict = {}
    for seq in trie.sequences():
        node = root
        for tok in seq:
            node = node.setdefault(tok, {})
    start = int(prompt_len) + (1 if ((prompt_len == 0) if decoder_start is None else decoder_start) else 0)

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        node = root
        finished = False
        for tok in sent[start:].tolist():
            if finished:
                if tok in (trie.after_end, trie.eos_id):
                    continue
                return [trie.eos_id]
            if tok not in node:
                return [trie.eos_id]  # left the trie: only ending is possible
            node = node[tok]
            finished = not node
        return [trie.after_end] if finished else list(node)

    return allowed


def parse_items(texts: list[str], lookup: Callable[[str], str | None] | Mapping[str, str]) -> list[str | None]:
    """Map decoded strings to raw item ids, None where a string is not an item id.

    `lookup` is `ItemIndex.lookup` or a dict text -> raw id. Tokenizers may put spaces between
    atomic id pieces when decoding ("<i0_3> <i1_7>"), so a miss is retried with whitespace removed.
    """
    find = lookup.get if isinstance(lookup, Mapping) else lookup
    out: list[str | None] = []
    for text in texts:
        s = (text or "").strip()
        hit = find(s) if s else None
        if hit is None and s:
            squeezed = "".join(s.split())
            if squeezed != s:
                hit = find(squeezed)
        out.append(hit)
    return out
