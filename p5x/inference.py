"""Asking a loaded model things: free text, ranked catalogue items, yes/no probabilities.

Shared by `generate.py` (one question at a time) and `p5x.evaluate` (every test user). All three
work on rendered prompt strings, in batches, on whatever device the model sits on.

- `generate_text`: greedy (or beam) decoding of free text (ratings, explanations, summaries).
- `rank_items`: beam search constrained by the item trie (p5x.decoding), so every returned
  sequence is a real catalogue id; beams come back best first and are mapped to raw item ids.
  It runs p5x's own beam search, `trie_beams`, which returns HF's beams but reads each prompt once
  rather than once per beam; one-token ids on an encoder-decoder take its cut-down form,
  `one_token_beams` (two decoder calls, the second read only at eos).
- `yes_probability`: P("yes") against P("no") from the first answer step's logits, with the answer
  tokens looked up from the tokenizer at run time.
- `target_logprob`: the summed log-probability of a given target text (eos included) after its
  prompt, for ranking candidate texts (zero-shot next item by title).
"""

from __future__ import annotations

import inspect
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .decoding import Exclusion, ItemTrie, TrieLogitsProcessor, fit_width
from .errors import ConfigError


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _batches(n: int, size: int, desc: str | None, progress: bool):
    starts = range(0, n, size)
    if progress and desc:
        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for s in starts:
        yield s, min(n, s + size)


def _encode(ckpt, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    batch = ckpt.featurizer.encode_prompts(list(prompts))
    dev = _device(ckpt.model)
    return {k: v.to(dev) for k, v in batch.items()}


def build_item_trie(ckpt, items: Sequence[str] | None = None) -> ItemTrie:
    """A trie over the token sequences of catalogue ids, encoded by the featurizer's target encoder."""
    raw = list(ckpt.index.codes) if items is None else list(items)
    seqs = ckpt.featurizer.encode_targets([ckpt.index.text(i) for i in raw])
    vocab = max(len(ckpt.tokenizer), ckpt.model.backbone.get_output_embeddings().weight.shape[0])
    return ItemTrie(seqs, eos_id=ckpt.tokenizer.eos_token_id, vocab_size=vocab,
                    pad_id=ckpt.tokenizer.pad_token_id, names=raw)


@torch.no_grad()
def generate_text(ckpt, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 32,
                  num_beams: int = 1, desc: str | None = None, progress: bool = True) -> list[str]:
    ckpt.model.eval()
    out: list[str] = []
    for s, e in _batches(len(prompts), batch_size, desc, progress):
        batch = _encode(ckpt, prompts[s:e])
        ids = ckpt.model.generate(**batch, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                  do_sample=False, pad_token_id=ckpt.tokenizer.pad_token_id)
        out.extend(t.strip() for t in ckpt.tokenizer.batch_decode(ids, skip_special_tokens=True))
    return out


@torch.no_grad()
def check_prior_supported(ckpt, trie: ItemTrie) -> None:
    """A prior over the items (rank_items' `prior`) is added at the step that names the item: one-token
    ids on an encoder-decoder. Raises ConfigError otherwise, before any ranking work."""
    if trie.max_len != 2 or ckpt.model.decoder_only:
        raise ConfigError("a prior on the item scores (--content-prior) needs one-token item ids (--index atomic) "
                          "on an encoder-decoder")


def rank_items(ckpt, prompts: Sequence[str], trie: ItemTrie, beams: int = 20, batch_size: int = 16,
               desc: str | None = None, progress: bool = True, fast: bool = True,
               exclude: Sequence[Iterable[str]] | None = None,
               allow: Sequence[Iterable[str]] | None = None,
               prior: tuple | None = None) -> tuple[list[list[str]], int]:
    """Top-`beams` raw item ids per prompt (best first) and the count of outputs that were not items.

    The search is p5x's own, `trie_beams`, which returns HF's beams (`one_token_beams`, its cut-down
    form, for one-token ids on an encoder-decoder); `fast=False` runs HF's `generate` instead (the
    reference the tests compare against).

    `exclude[k]` (raw ids, e.g. the user's history) are items prompt k may not be given: the search
    runs over the catalogue without them (ItemTrie.exclusion), so the `beams` returned are the best
    other items, not what is left after dropping them from the usual beams; a prompt left with fewer
    than `beams` items gets them all, and its batch-mates are searched as they would be alone.

    `allow[k]` (raw ids, e.g. the candidates a prompt lists) is the other way round: prompt k may be
    given only these items (ItemTrie.restriction), the search running as over a trie of them alone.
    One of `exclude` and `allow` at a time.

    `prior` = (scorer, histories, weight): prompt k's first answer step ranks items by log P(item)
    plus weight x scorer.scores([histories[k]]) (one score per `scorer.items`, e.g. a
    p5x.content.ContentPrior), as a logits processor adding it would in HF's beam search. One-token
    item ids only (where the first step names the item)."""
    ckpt.model.eval()
    if exclude is not None and allow is not None:
        raise ValueError("rank_items takes exclude or allow, not both")
    for what, sets in (("exclusion", exclude), ("allowed", allow)):
        if sets is not None and len(sets) != len(prompts):
            raise ValueError(f"rank_items got {len(sets)} {what} sets for {len(prompts)} prompts")
    beams = min(beams, trie.num_items)
    ranked: list[list[str]] = []
    invalid = 0
    # one-token ids: the item token names the item (no detokenizing); it follows the decoder start
    # token of an encoder-decoder and opens a decoder-only model's output
    one_token = trie.max_len == 2 and fast
    item_col = 0 if ckpt.model.decoder_only else 1
    if prior is not None:
        scorer, histories, weight = prior
        if not fast:
            raise ValueError("rank_items: a prior is added by p5x's own search (fast=True)")
        check_prior_supported(ckpt, trie)
        if len(histories) != len(prompts):
            raise ValueError(f"rank_items got {len(histories)} prior histories for {len(prompts)} prompts")
        cols = trie.tokens_of_names(scorer.items)
        keep = [k for k, c in enumerate(cols) if c is not None]
        prior_cols = torch.tensor([cols[k] for k in keep], dtype=torch.long, device=_device(ckpt.model))
        prior_keep = torch.tensor(keep, dtype=torch.long)
    for s, e in _batches(len(prompts), batch_size, desc, progress):
        batch = _encode(ckpt, prompts[s:e])
        # per prompt: the set of names it may not be given (exclude) or may only be given (allow),
        # how many catalogue items that leaves it, and the search's cut edges
        sets, exclusion, left = None, None, None
        if exclude is not None or allow is not None:
            sets = [set(map(str, x)) for x in (exclude if allow is None else allow)[s:e]]
            if allow is None:
                exclusion = trie.exclusion(sets)
                left = [trie.num_items - trie.count_named(x) for x in sets]
            else:
                exclusion = trie.restriction(sets)
                left = [trie.count_named(x) for x in sets]
        if fast:
            embeds = ckpt.model.embed(batch["input_ids"], batch.get("whole_word_ids"))
            search = one_token_beams if one_token and not ckpt.model.decoder_only else trie_beams
            if prior is not None:
                add = torch.from_numpy(scorer.scores(histories[s:e]))[:, prior_keep] * weight
                ids = one_token_beams(ckpt.model.backbone, embeds, batch["attention_mask"], trie, beams, exclusion,
                                      bonus=(prior_cols, add.to(prior_cols.device)))
            else:
                ids = search(ckpt.model.backbone, embeds, batch["attention_mask"], trie, beams, exclusion)
        else:
            # decoder-only models generating from inputs_embeds see only the new tokens
            proc = TrieLogitsProcessor(trie, prompt_len=0, decoder_start=not ckpt.model.decoder_only,
                                       exclusion=exclusion, group_size=beams)
            ids = ckpt.model.generate(**batch, max_new_tokens=trie.max_len, num_beams=beams,
                                      num_return_sequences=beams, do_sample=False, early_stopping=True,
                                      logits_processor=[proc], pad_token_id=ckpt.tokenizer.pad_token_id)
        named = trie.names_of_tokens(ids[:, item_col].tolist()) if one_token else None
        if named is None:
            named = [ckpt.index.lookup(t.replace(" ", ""))
                     for t in ckpt.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        for r in range(e - s):
            row, seen = [], set()
            # a prompt left with fewer items than beams fills its other beams with what the mask
            # forbade (score -inf): dropped, and not counted as the model's invalid output
            short = left is not None and left[r] < beams
            for item in named[r * beams:(r + 1) * beams]:
                if item is not None and sets is not None and (item in sets[r]) == (allow is None):
                    continue
                if item is None:
                    invalid += 0 if short else 1
                elif item not in seen:
                    seen.add(item)
                    row.append(item)
            ranked.append(row)
    return ranked, invalid


def _cache_of(out):
    """The key/value cache a forward returned: `cache` in recent transformers, `past_key_values` in
    earlier 5.x releases (the GPU image's 5.17)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _with_cache(backbone, cache) -> dict:
    """The keyword that hands `cache` back to `backbone`'s forward (renamed as `_cache_of` says)."""
    params = inspect.signature(backbone.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


@torch.no_grad()
def one_token_beams(backbone, embeds: torch.Tensor, mask: torch.Tensor, trie: ItemTrie, beams: int,
                    exclusion: Exclusion | None = None, bonus: tuple | None = None) -> torch.Tensor:
    """`trie_beams` for an encoder-decoder when every item is a single token followed by eos, cut to
    what that case needs (about 1.35x faster on t5-tiny, where the search's own work is a large share).

    Beam search's first step keeps the `beams` best allowed tokens by log-probability (every beam
    starts identical, so this is a top-k over one row per prompt); its second step can only add eos to
    each, and all beams end at the same length, so the final order is by log P(item) + log P(eos |
    item), the score HF ranks finished beams by: only the eos column of the second step is needed.
    `bonus` = (tokens [m], values [n, m]) is added to the first step's log-probabilities at those
    tokens (a prior over the items, as a logits processor would add it), so it counts in the top-k
    and in the final order.
    Returns [n * beams, 3] token ids (decoder start, item, eos), each prompt's beams best first."""
    n, dev = mask.shape[0], mask.device
    if trie.device != dev:
        trie.to(dev)
    first, step = _seq2seq_steps(backbone, embeds, mask, beams)
    logp = torch.log_softmax(first.float(), -1).masked_fill(~fit_width(trie.root_mask(), first.shape[1]),
                                                            float("-inf"))
    if bonus is not None:
        logp[:, bonus[0]] += bonus[1].to(logp.dtype)
    logp = trie.mask_excluded(logp, exclusion, trie.root_states(n), torch.arange(n, device=dev))
    top, items = logp.topk(beams, dim=-1)  # [n, beams]
    logits2 = step(items.reshape(-1), None).float()
    total = top + (logits2[:, trie.eos_id] - logits2.logsumexp(-1)).view(n, beams)
    order = total.argsort(dim=-1, descending=True, stable=True)
    items = items.gather(1, order).reshape(-1, 1)
    start = torch.full_like(items, backbone.config.decoder_start_token_id)
    return torch.cat([start, items, torch.full_like(items, trie.eos_id)], 1)


_NEG = -1.0e9  # what HF's beam search adds to rule a candidate out (kept for identical tie-breaking)


def _seq2seq_steps(backbone, embeds, mask, beams):
    """`trie_beams`' model calls for an encoder-decoder: (logits of the first answer step, one row per
    prompt; step(tokens, order) -> logits of the next step for every beam). The encoder, and the
    cross-attention keys and values of its states, are computed once per prompt; at the second step
    the cache is copied to the beams, and after that only its self-attention part follows them."""
    enc = backbone.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
    start = torch.full((mask.shape[0], 1), backbone.config.decoder_start_token_id, dtype=torch.long,
                       device=mask.device)
    out = backbone(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=start, use_cache=True)
    cache, held = _cache_of(out), {}

    def step(tokens, order):
        if order is None:
            cache.batch_repeat_interleave(beams)
            held["hidden"] = enc.last_hidden_state.repeat_interleave(beams, 0)
            held["mask"] = mask.repeat_interleave(beams, 0)
        else:
            cache.self_attention_cache.reorder_cache(order)
        return backbone(encoder_outputs=(held["hidden"],), attention_mask=held["mask"], use_cache=True,
                        decoder_input_ids=tokens[:, None], **_with_cache(backbone, cache)).logits[:, -1]

    return out.logits[:, -1], step


def _causal_steps(backbone, embeds, mask, beams):
    """The same for a decoder-only model over a left-padded prompt: the prompt is read once per
    prompt (HF reads it once per beam), positions count real tokens only, as HF's generate counts
    them, and only the logits of the last position are projected onto the vocabulary."""
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1)
    cache, held = _cache_of(out), {}

    def step(tokens, order):
        if order is None:
            cache.batch_repeat_interleave(beams)
            held["mask"] = mask.repeat_interleave(beams, 0)
            held["next"] = mask.long().sum(-1).repeat_interleave(beams)[:, None]
        else:  # a beam only moves within its prompt: mask and positions stay as they are
            cache.reorder_cache(order)
        held["mask"] = torch.cat([held["mask"], held["mask"].new_ones(held["mask"].shape[0], 1)], 1)
        logits = backbone(input_ids=tokens[:, None], attention_mask=held["mask"], position_ids=held["next"],
                          use_cache=True, logits_to_keep=1, **_with_cache(backbone, cache)).logits[:, -1]
        held["next"] = held["next"] + 1
        return logits

    return out.logits[:, -1], step


@torch.no_grad()
def trie_beams(backbone, embeds: torch.Tensor, mask: torch.Tensor, trie: ItemTrie, beams: int,
               exclusion: Exclusion | None = None, length_penalty: float = 1.0,
               with_scores: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """HF's constrained beam search (`generate(num_beams=beams, num_return_sequences=beams,
    early_stopping=True, max_new_tokens=trie.max_len)` with a TrieLogitsProcessor) over ids of any
    length, returning the same beams in the same order, without its costs:

    - the prompt is read once, not once per beam: every beam starts identical, so the encoder (and
      the cross-attention keys and values of its states), or a decoder-only model's pass over the
      prompt, runs on one row per prompt and its cache is then copied to the beams;
    - an encoder-decoder's cross-attention cache stays where it is between steps (a beam never
      leaves its prompt; HF reorders it with the self-attention cache);
    - the trie state of each beam is carried along with it, not recovered from its tokens.

    The selection is HF's, step for step: the best 2 x `beams` continuations of a prompt's running
    beams; those among the first `beams` that end (eos, or the length cap) join the finished set at
    score / length ** length_penalty, the best `beams` of the rest run on; a prompt stops once
    `beams` have finished, or when none of its running beams can beat its finished ones any more.

    `backbone` is the HF model, `embeds` the prompt's input embeddings (whole-word ids added), `mask`
    its attention mask (a decoder-only prompt left-padded). Returns [n * beams, width] token ids,
    each prompt's beams best first, filled with the trie's pad after eos: an encoder-decoder's start
    with its decoder start token, a decoder-only model's hold the new tokens only (as `generate`);
    `with_scores` adds each beam's final score ([n * beams], HF's `sequences_scores`)."""
    n, dev, k = mask.shape[0], mask.device, beams
    if trie.device != dev:
        trie.to(dev)
    steps = _seq2seq_steps if backbone.config.is_encoder_decoder else _causal_steps
    first, step = steps(backbone, embeds, mask, k)
    logp = torch.log_softmax(first.float(), -1)  # [n, vocab]: one row stands for the k beams
    vocab, max_new = logp.shape[1], trie.max_len
    groups = torch.arange(n * k, device=dev) // k
    offset = (torch.arange(n, device=dev) * k)[:, None]
    rank = torch.arange(2 * k, device=dev)[None, :]
    run_scores = torch.zeros(n, k, device=dev)
    run_scores[:, 1:] = _NEG  # as HF: the copies of the first beam start out of the running
    run_states = trie.root_states(n * k).view(n, k)
    run_seq = torch.full((n, k, max_new), trie.after_end, dtype=torch.long, device=dev)
    fin_scores = torch.full((n, k), _NEG, device=dev)
    fin_seq, fin_len = run_seq.clone(), torch.zeros(n, k, dtype=torch.long, device=dev)
    fin_done = torch.zeros(n, k, dtype=torch.bool, device=dev)
    # HF's early-stop heuristic, per prompt: False once no running beam can beat a full finished set
    open_ = torch.ones(n, 1, dtype=torch.bool, device=dev)
    order = None

    def masked(scores, states, row_groups):
        return trie.mask_excluded(trie.constrain(scores, states), exclusion, states, row_groups)

    def best_continuations(rows):  # rows: [n * k, vocab] -> (scores, beam, token) of the best 2k per prompt
        top, idx = (rows.view(n, k, vocab) + run_scores[:, :, None]).view(n, k * vocab).topk(2 * k, dim=1)
        return top, idx // vocab, idx % vocab

    for t in range(max_new):
        if t == 0:
            # the k beams are copies, the first at score 0 and the rest at -1e9 (as HF starts them):
            # when 2k first tokens are allowed, the 2k best candidates are all the first beam's, so
            # one row per prompt does; a smaller catalogue takes the copies' -1e9 candidates as HF does
            logp = masked(logp, trie.root_states(n), torch.arange(n, device=dev))
            if bool((torch.isfinite(logp).sum(1) >= 2 * k).all()):
                top, tok = logp.topk(2 * k, dim=1)
                src = torch.zeros_like(tok)
            else:
                top, src, tok = best_continuations(logp.repeat_interleave(k, 0))
        else:
            logp = torch.log_softmax(step(run_seq[:, :, t - 1].reshape(-1), order).float(), -1)
            top, src, tok = best_continuations(masked(logp, run_states.reshape(-1), groups))
        seq = run_seq.gather(1, src[:, :, None].expand(-1, -1, max_new)).clone()
        seq[:, :, t] = tok
        ends = (tok == trie.eos_id) | (t + 1 >= max_new)
        # the best `beams` continuations that have not ended run on
        running = top + ends.float() * _NEG
        keep = running.topk(k, dim=1).indices
        run_scores = running.gather(1, keep)
        run_seq = seq.gather(1, keep[:, :, None].expand(-1, -1, max_new))
        parent = src.gather(1, keep)
        run_states = trie.advance(run_states.gather(1, parent).reshape(-1), run_seq[:, :, t].reshape(-1)).view(n, k)
        # those among the first `beams` that ended join the finished set, while it has room
        joins = ends & (rank < k)
        cand = top / ((t + 1) ** length_penalty)
        cand = cand + fin_done.all(1, keepdim=True).float() * _NEG
        cand = cand + (~open_).float() * _NEG
        cand = cand + (~joins).float() * _NEG
        scores = torch.cat([fin_scores, cand], 1)
        best = scores.topk(k, dim=1).indices
        fin_scores = scores.gather(1, best)
        fin_seq = torch.cat([fin_seq, seq], 1).gather(1, best[:, :, None].expand(-1, -1, max_new))
        fin_len = torch.cat([fin_len, torch.full_like(top, t + 1, dtype=torch.long)], 1).gather(1, best)
        fin_done = torch.cat([fin_done, joins], 1).gather(1, best)
        worst = torch.where(fin_done, fin_scores.min(1, keepdim=True).values, torch.full_like(fin_scores, _NEG))
        open_ = open_ & (run_scores[:, :1] / ((t + 1) ** length_penalty) > worst).any(1, keepdim=True)
        if not bool(open_.any()) or bool(fin_done.all()) or bool(ends.all()):
            break
        # from the third step on the cache follows the beams (before it, every beam was a copy)
        order = (parent + offset).reshape(-1) if t > 0 else None
    width = max(1, int(fin_len.max()))
    out = fin_seq.view(n * k, max_new)[:, :width]
    if backbone.config.is_encoder_decoder:
        start = torch.full((n * k, 1), backbone.config.decoder_start_token_id, dtype=torch.long, device=dev)
        out = torch.cat([start, out], 1)
    return (out, fin_scores.reshape(-1)) if with_scores else out


@torch.no_grad()
def yes_probability(ckpt, prompts: Sequence[str], batch_size: int = 64, desc: str | None = None,
                    progress: bool = True) -> np.ndarray:
    """P(yes) / (P(yes) + P(no)) at the first answer position, per prompt (in the given order).
    Prompts are batched in order of length, so a batch pads to prompts of about its own length."""
    ckpt.model.eval()
    yes_id, no_id = ckpt.featurizer.answer_ids(("yes", "no"))
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out = []
    for s, e in _batches(len(prompts), batch_size, desc, progress):
        batch = _encode(ckpt, [prompts[i] for i in order[s:e]])
        if ckpt.model.decoder_only:  # prompts are left-padded: the last position reads the answer
            logits = ckpt.model(**batch, logits_to_keep=1).logits[:, -1]
        else:
            start = ckpt.model.backbone.config.decoder_start_token_id
            dec = torch.full((e - s, 1), start, dtype=torch.long, device=batch["input_ids"].device)
            logits = ckpt.model(**batch, decoder_input_ids=dec).logits[:, 0]
        pair = torch.stack([logits[:, yes_id], logits[:, no_id]], -1).float().softmax(-1)
        out.append(pair[:, 0].cpu().numpy())
    probs = np.zeros(len(prompts))
    if out:
        probs[order] = np.concatenate(out)
    return probs


def _token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row sum of log p(label) over positions whose label is not -100."""
    logp = logits.float().log_softmax(-1)
    mask = labels != -100
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


@torch.no_grad()
def target_logprob(ckpt, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 64,
                   desc: str | None = None, progress: bool = True) -> np.ndarray:
    """log P(target | prompt) per pair: the sum over the target's tokens and its eos, as encoded by
    the featurizer's target encoder (so truncation at max_target_len applies as in training).

    T5: each distinct prompt in a batch is encoded once and its encoder states are shared by the
    targets that follow it (many candidates per prompt is the common case). Decoder-only: prompt +
    target as one right-padded sequence; position t scores token t + 1.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    ckpt.model.eval()
    dev = _device(ckpt.model)
    fz = ckpt.featurizer
    out = []
    for s, e in _batches(len(prompts), batch_size, desc, progress):
        if ckpt.model.decoder_only:
            batch = fz([{"inputs": p, "targets": t} for p, t in zip(prompts[s:e], targets[s:e])])
            batch = {k: v.to(dev) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = ckpt.model(**batch).logits
            out.append(_token_logprobs(logits[:, :-1], labels[:, 1:]).cpu().numpy())
            continue
        uniq = list(dict.fromkeys(prompts[s:e]))
        at = {p: k for k, p in enumerate(uniq)}
        owner = torch.tensor([at[p] for p in prompts[s:e]], device=dev)
        enc_in = {k: v.to(dev) for k, v in fz.encode_prompts(uniq).items()}
        embeds = ckpt.model.embed(enc_in["input_ids"], enc_in.get("whole_word_ids"))
        states = ckpt.model.backbone.get_encoder()(inputs_embeds=embeds,
                                                   attention_mask=enc_in["attention_mask"])
        labels = fz._pad(fz.encode_targets(list(targets[s:e])), -100, "right").to(dev)
        res = ckpt.model.backbone(encoder_outputs=(states.last_hidden_state[owner],),
                                  attention_mask=enc_in["attention_mask"][owner], labels=labels)
        out.append(_token_logprobs(res.logits, labels).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
