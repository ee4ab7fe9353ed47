"""Tests for p5x.decoding: trie invariants, the vectorised processor against HF's prefix function,
and generation with tiny T5 / LLaMA models rigged to prefer tokens outside the catalogue."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from p5x import decoding
from p5x.decoding import DEAD, ItemTrie, TrieLogitsProcessor, make_prefix_allowed_tokens_fn, parse_items

PAD, EOS, BOS, VOCAB = 0, 1, 2, 50
CATALOGUE_TOKENS = list(range(10, 30))  # item ids only use these; 30..49 are "invalid" tokens


def make_items(n=40, seed=0):
    rng = random.Random(seed)
    seqs = set()
    while len(seqs) < n:
        seqs.add(tuple(rng.choice(CATALOGUE_TOKENS) for _ in range(rng.randint(1, 3))))
    seqs = sorted(seqs)
    # an item that is a prefix of another (before eos), and a duplicate
    seqs += [(11,), (11, 12), (11, 12, 13), (11, 12)]
    return [list(s) + [EOS] for s in seqs]


@pytest.fixture(scope="module")
def items():
    return make_items()


@pytest.fixture(scope="module")
def trie(items):
    return ItemTrie(items, eos_id=EOS, vocab_size=VOCAB, pad_id=PAD)


def test_every_item_reachable_and_ends_at_leaf(trie, items):
    assert trie.num_items == len({tuple(s) for s in items})
    for seq in items:
        states = trie.root_states(1)
        for tok in seq:
            assert trie.allowed_mask(states)[0, tok], f"{seq}: {tok} not allowed"
            states = trie.advance(states, torch.tensor([tok]))
            assert int(states[0]) != DEAD
        assert bool(trie.is_leaf[states[0]])
        assert trie.contains(seq)
        # after the item only padding is allowed
        assert trie.allowed_mask(states)[0].nonzero().flatten().tolist() == [PAD]
        assert int(trie.advance(states, torch.tensor([PAD]))[0]) == int(states[0])


def test_no_non_item_path_ends_in_eos(trie, items):
    # exhaustively enumerate every path of the trie; a path that ends in eos must be an item
    item_set = {tuple(s) for s in items}
    frontier = [((), trie.root_states(1))]
    ended = set()
    while frontier:
        path, st = frontier.pop()
        allowed = trie.allowed_mask(st)[0].nonzero().flatten().tolist()
        if bool(trie.is_leaf[st[0]]):
            ended.add(path)
            continue
        for tok in allowed:
            frontier.append((path + (tok,), trie.advance(st, torch.tensor([tok]))))
    assert ended == item_set
    assert not trie.contains([11, 14, EOS]) and not trie.contains([11, 12])


def test_prefix_items_and_dead_ends(trie):
    st = trie.walk(torch.tensor([[11, 12]]))
    allowed = set(trie.allowed_mask(st)[0].nonzero().flatten().tolist())
    assert {EOS, 13} <= allowed  # (11, 12) is an item and a prefix of (11, 12, 13)
    dead = trie.walk(torch.tensor([[45, 46]]))
    assert int(dead[0]) == DEAD
    assert trie.allowed_mask(dead)[0].nonzero().flatten().tolist() == [EOS]


def test_bad_sequences_rejected():
    with pytest.raises(ValueError):
        ItemTrie([[3, 4]], eos_id=EOS, vocab_size=VOCAB)
    with pytest.raises(ValueError):
        ItemTrie([[3, EOS, 4, EOS]], eos_id=EOS, vocab_size=VOCAB)
    with pytest.raises(ValueError):
        ItemTrie([[3, 99, EOS]], eos_id=EOS, vocab_size=VOCAB)


@pytest.mark.parametrize("path", ["auto", "dense", "sparse"])
def test_processor_matches_prefix_fn_on_random_prefixes(trie, path, monkeypatch):
    # random prefixes: mostly valid walks, some garbage, in a shuffled order across calls; each
    # masking path (a dense mask per distinct state, or the list of allowed pairs) forced in turn
    if path != "auto":
        monkeypatch.setattr(decoding, "_DENSE_RATIO", 10**9 if path == "dense" else 0)
    rng = random.Random(1)
    fn = make_prefix_allowed_tokens_fn(trie, prompt_len=0, decoder_start=True)
    proc = TrieLogitsProcessor(trie, prompt_len=0, decoder_start=True)
    rows = [[PAD] for _ in range(16)]
    for step in range(5):
        ids = torch.tensor(rows)
        out = proc(ids, torch.zeros(len(rows), VOCAB))
        for r in range(len(rows)):
            expect = sorted(fn(0, ids[r]))
            assert (out[r] == 0).nonzero().flatten().tolist() == expect
        # next step: pick allowed tokens (sometimes garbage) and shuffle rows like beam search does
        new = []
        for r in range(len(rows)):
            choices = (out[r] == 0).nonzero().flatten().tolist()
            tok = rng.choice(choices) if rng.random() > 0.1 else rng.randrange(VOCAB)
            new.append(rows[r] + [tok])
        rng.shuffle(new)
        new[0] = list(new[1])  # duplicated beams happen too
        rows = new


@pytest.mark.parametrize("width", [VOCAB - 5, VOCAB, VOCAB + 7])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_processor_one_token_catalogue_and_output_width(path, width, monkeypatch):
    # one-token ids (the atomic index): at the root every beam may take any item, the case the dense
    # path is for; the output layer may be narrower than the trie's vocabulary (tokenizer padding
    # counted) or wider (rows no item uses): both paths keep exactly the allowed, existing tokens
    monkeypatch.setattr(decoding, "_DENSE_RATIO", 10**9 if path == "dense" else 0)
    items = [[t, EOS] for t in range(10, VOCAB)]
    one = ItemTrie(items, eos_id=EOS, vocab_size=VOCAB, pad_id=PAD)
    proc = TrieLogitsProcessor(one, prompt_len=0, decoder_start=True)
    scores = torch.randn(6, width)
    out = proc(torch.full((6, 1), PAD), scores)
    allowed = [t for t in range(10, VOCAB) if t < width]
    assert out.shape == scores.shape
    for r in range(6):
        assert torch.isfinite(out[r]).nonzero().flatten().tolist() == allowed
        assert torch.equal(out[r, allowed], scores[r, allowed])
    # next step: each row has taken a different item, so only eos is left
    ids = torch.tensor([[PAD, 10 + r] for r in range(6)])
    out = proc(ids, torch.randn(6, width))
    assert all(torch.isfinite(out[r]).nonzero().flatten().tolist() == [EOS] for r in range(6))


def _rig(lm_head_in: int, bad_tokens, model):
    """Replace the output layer so that tokens outside the catalogue get the highest logits."""
    head = torch.nn.Linear(lm_head_in, VOCAB, bias=True)
    with torch.no_grad():
        head.weight.normal_(0, 0.02)
        head.bias.zero_()
        head.bias[bad_tokens] = 8.0
    model.lm_head = head
    return model


def tiny_t5(bad_tokens):
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
                   tie_word_embeddings=False)
    return _rig(32, bad_tokens, T5ForConditionalGeneration(cfg).eval())


def tiny_llama(bad_tokens):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, pad_token_id=PAD, eos_token_id=EOS,
                      bos_token_id=BOS, tie_word_embeddings=False, max_position_embeddings=64)
    return _rig(32, bad_tokens, LlamaForCausalLM(cfg).eval())


BAD = [t for t in range(VOCAB) if t not in CATALOGUE_TOKENS and t not in (PAD, EOS)]


def _generated(model, decoder_only, prompts, trie, **kw):
    attn = torch.ones_like(prompts)
    with torch.no_grad():
        out = model.generate(input_ids=prompts, attention_mask=attn, num_beams=5, num_return_sequences=5,
                             max_new_tokens=trie.max_len, do_sample=False, pad_token_id=PAD,
                             eos_token_id=EOS, **kw)
    return out[:, prompts.shape[1]:] if decoder_only else out[:, 1:]


def _strip(seq):
    seq = seq.tolist()
    return seq[: seq.index(EOS) + 1] if EOS in seq else seq


@pytest.mark.parametrize("backbone", ["t5", "llama"])
def test_generation_with_model_preferring_invalid_tokens(backbone, trie):
    decoder_only = backbone == "llama"
    model = tiny_llama(BAD) if decoder_only else tiny_t5(BAD)
    torch.manual_seed(1)
    prompts = torch.randint(3, VOCAB, (3, 7))
    # unconstrained, the rigged model produces junk: the test can fail
    free = _generated(model, decoder_only, prompts, trie)
    assert not any(trie.contains(_strip(s)) for s in free)

    plen = prompts.shape[1] if decoder_only else 0
    proc = TrieLogitsProcessor(trie, prompt_len=plen, decoder_start=not decoder_only)
    fast = _generated(model, decoder_only, prompts, trie, logits_processor=[proc])
    assert fast.shape[0] == 15
    for s in fast:
        assert trie.contains(_strip(s)), s.tolist()
        tail = s.tolist()[len(_strip(s)):]
        assert all(t in (PAD, EOS) for t in tail)  # HF fills finished beams with pad or eos
    # five distinct items per user
    for u in range(3):
        assert len({tuple(_strip(s)) for s in fast[u * 5:(u + 1) * 5]}) == 5

    fn = make_prefix_allowed_tokens_fn(trie, prompt_len=plen, decoder_start=not decoder_only)
    slow = _generated(model, decoder_only, prompts, trie, prefix_allowed_tokens_fn=fn)
    assert torch.equal(fast, slow)


def test_parse_items():
    table = {"<i0_1><i1_2>": "A", "<i0_3>": "B"}
    assert parse_items(["<i0_1><i1_2>", " <i0_1> <i1_2> ", "<i0_9>", "", "<i0_3>"], table) == \
        ["A", "A", None, None, "B"]
    assert parse_items(["<i0_3>"], table.get) == ["B"]


def test_llama_generating_from_inputs_embeds():
    # whole-word embeddings reach a decoder-only model as inputs_embeds: HF then hands the
    # processor only the generated tokens, so prompt_len=0 and no decoder start token
    trie = ItemTrie(make_items(), eos_id=EOS, vocab_size=VOCAB, pad_id=PAD)
    model = tiny_llama(BAD)
    torch.manual_seed(2)
    prompts = torch.randint(3, VOCAB, (2, 6))
    embeds = model.get_input_embeddings()(prompts).detach()
    proc = TrieLogitsProcessor(trie, prompt_len=0, decoder_start=False)
    with torch.no_grad():
        out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(prompts), num_beams=5,
                             num_return_sequences=5, max_new_tokens=trie.max_len, do_sample=False,
                             pad_token_id=PAD, eos_token_id=EOS, logits_processor=[proc])
    assert out.shape[0] == 10
    for s in out:
        assert trie.contains(_strip(s)), s.tolist()


def _named_trie(items):
    return ItemTrie(items, eos_id=EOS, vocab_size=VOCAB, pad_id=PAD, names=[f"it{k}" for k in range(len(items))])


def _names_of(items, seqs):
    """Every name whose sequence is in `seqs` (the catalogue holds one duplicate sequence)."""
    return {f"it{k}" for k, s in enumerate(items) if tuple(s) in seqs}


def _rigged(backbone):
    """(decoder_only, a tiny model preferring tokens outside the catalogue, the items, their named trie)."""
    decoder_only = backbone == "llama"
    items = make_items()
    return decoder_only, tiny_llama(BAD) if decoder_only else tiny_t5(BAD), items, _named_trie(items)


def _states_along(trie, tokens):
    """The trie states at the root and after each of `tokens` in turn, one row each."""
    states = [trie.root_states(1)]
    for t in tokens:
        states.append(trie.advance(states[-1], torch.tensor([t])))
    return states


def _cut_tokens(trie, ex, group, states):
    """The tokens an exclusion or restriction cuts for `group` at `states`, sorted."""
    return sorted(trie.banned_pairs(ex, states, torch.full_like(states, group))[1].tolist())


def test_exclusion_cuts_whole_subtrees_and_single_items():
    items = make_items()
    trie = _named_trie(items)
    under_11 = {tuple(s) for s in items if s[0] == 11}
    ex = trie.exclusion([_names_of(items, under_11), _names_of(items, {(11, EOS)}), {"no-such-item"}])
    root, after_11 = _states_along(trie, [11])

    def cut(group, states):
        return _cut_tokens(trie, ex, group, states)

    # everything under token 11 banned: the root loses token 11 (no beam spent on that prefix)
    assert cut(0, root) == [11] and cut(0, after_11) == []
    # only the item "11" banned: 11 stays open (11 12, 11 12 13 live on), eos after it is cut
    assert cut(1, root) == [] and cut(1, after_11) == [EOS]
    assert cut(2, root) == [] and len(ex) == 2
    with pytest.raises(ValueError):
        ItemTrie(items, eos_id=EOS, vocab_size=VOCAB).exclusion([{"it0"}])


@pytest.mark.parametrize("backbone", ["t5", "llama"])
def test_exclusion_decodes_as_a_catalogue_without_the_banned_items(backbone):
    # per prompt, constrained beam search with an exclusion must equal beam search over a trie built
    # without that prompt's banned items; banned here = what each prompt's unexcluded search ranks
    # highest (so the test fails if the exclusion does nothing), plus a whole subtree for prompt 0
    decoder_only, model, items, trie = _rigged(backbone)
    torch.manual_seed(3)
    prompts = torch.randint(3, VOCAB, (3, 7))
    plen = prompts.shape[1] if decoder_only else 0

    def search(t, ps, **kw):
        proc = TrieLogitsProcessor(t, prompt_len=plen, decoder_start=not decoder_only, group_size=5, **kw)
        out = _generated(model, decoder_only, ps, t, logits_processor=[proc])
        return [[tuple(_strip(s)) for s in out[k * 5:(k + 1) * 5]] for k in range(ps.shape[0])]

    free = search(trie, prompts)
    banned = [set(f[:2]) for f in free]
    banned[0] |= {tuple(s) for s in items if s[0] == free[0][2][0]}
    got = search(trie, prompts, exclusion=trie.exclusion([_names_of(items, b) for b in banned]))
    for k in range(3):
        assert not set(got[k]) & banned[k] and got[k] != free[k]
        rest = [s for s in items if tuple(s) not in banned[k]]
        want = search(ItemTrie(rest, eos_id=EOS, vocab_size=VOCAB, pad_id=PAD), prompts[k:k + 1])[0]
        assert got[k] == want


def test_restriction_cuts_every_edge_off_the_allowed_paths():
    items = make_items()
    trie = _named_trie(items)
    only_11 = _names_of(items, {(11, EOS)})
    ex = trie.restriction([only_11, _names_of(items, {(11, 12, EOS)}), {"no-such-item"}, set()])
    root, after_11, after_11_12 = _states_along(trie, [11, 12])

    def allowed(group, states):
        live = trie.allowed_mask(states)[0].nonzero().flatten().tolist()
        return sorted(set(live) - set(_cut_tokens(trie, ex, group, states)))

    # only the item "11": the root keeps token 11, after it only eos (11 12 and 11 12 13 cut)
    assert allowed(0, root) == [11] and allowed(0, after_11) == [EOS]
    # only "11 12": 11, then 12, then eos (13 cut)
    assert allowed(1, root) == [11] and allowed(1, after_11) == [12] and allowed(1, after_11_12) == [EOS]
    # nothing the trie holds: nothing left at the root
    assert allowed(2, root) == [] and allowed(3, root) == []
    with pytest.raises(ValueError):
        ItemTrie(items, eos_id=EOS, vocab_size=VOCAB).restriction([{"it0"}])


@pytest.mark.parametrize("backbone", ["t5", "llama"])
def test_restriction_decodes_as_a_catalogue_of_the_allowed_items_alone(backbone):
    # trie_beams with a restriction must give, per prompt, what it gives over a trie built from that
    # prompt's allowed items alone (beams and scores); allowed = items the free search does not rank
    # first (so the test fails if the restriction does nothing), prompt 1 given fewer than the beams
    from p5x.inference import trie_beams

    decoder_only, model, items, trie = _rigged(backbone)
    torch.manual_seed(5)
    prompts = torch.randint(3, VOCAB, (3, 7))
    attn = torch.ones_like(prompts)
    embeds = model.get_input_embeddings()(prompts).detach()
    cut = 0 if decoder_only else 1
    beams = 4
    free = trie_beams(model, embeds, attn, trie, beams)
    top = {tuple(_strip(free[k * beams][cut:])) for k in range(3)}
    pool = [k for k, s in enumerate(items) if tuple(s) not in top]
    allowed = [set(pool[::3]), set(pool[1:4:2]), set(pool[2::2])]
    names = [{f"it{k}" for k in a} for a in allowed]
    got, scores = trie_beams(model, embeds, attn, trie, beams, trie.restriction(names), with_scores=True)
    for k in range(3):
        sub = ItemTrie([items[j] for j in sorted(allowed[k])], eos_id=EOS, vocab_size=VOCAB, pad_id=PAD)
        want, want_scores = trie_beams(model, embeds[k:k + 1], attn[k:k + 1], sub, beams, with_scores=True)
        mine = got[k * beams:(k + 1) * beams]
        n = min(beams, sub.num_items)
        assert [_strip(s[cut:]) for s in mine[:n]] == [_strip(s[cut:]) for s in want[:n]]
        assert torch.allclose(scores[k * beams:k * beams + n], want_scores[:n], atol=1e-5, rtol=0)
        assert all(tuple(_strip(s[cut:])) in {tuple(items[j]) for j in allowed[k]} for s in mine[:n])


def test_one_token_names_and_the_root_mask():
    """names_of_tokens names one-token items (token, eos) and nothing else; the root mask is
    allowed_mask at the root, built once."""
    trie = ItemTrie([[5, 1], [6, 1], [7, 8, 1]], eos_id=1, vocab_size=10, pad_id=0, names=["a", "b", "c"])
    assert trie.names_of_tokens([6, 5, 7, 3]) == ["b", "a", None, None]
    assert ItemTrie([[5, 1]], eos_id=1, vocab_size=10).names_of_tokens([5]) is None
    root = trie.root_mask()
    assert torch.equal(root, trie.allowed_mask(trie.root_states(1)))
    assert root[0].nonzero().flatten().tolist() == [5, 6, 7]
    assert trie.root_mask() is root


@pytest.mark.parametrize("backbone", ["t5", "llama"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
@pytest.mark.parametrize("excluded", [False, True])
@pytest.mark.parametrize("beams", [6, 15])  # 2 x 15 > the 20 first tokens: HF's -1e9 copies take part
def test_trie_beams_returns_what_hf_beam_search_returns(backbone, length_penalty, excluded, beams):
    # p5x.inference.trie_beams re-implements HF's constrained beam search (the prompt read once per
    # prompt, not once per beam); it must give the same beams in the same order: ids of different
    # lengths (1-3 tokens, one a prefix of another), padded prompts (left-padded for the decoder-only
    # model, given as inputs_embeds as P5XModel.generate gives them), a model that prefers tokens
    # outside the catalogue, and, when excluded, each prompt's own banned items
    from p5x.inference import trie_beams

    decoder_only, model, items, trie = _rigged(backbone)
    torch.manual_seed(4)
    prompts = torch.randint(3, VOCAB, (4, 9))
    attn = torch.ones_like(prompts)
    if decoder_only:
        attn[1, :3] = 0
        attn[3, :6] = 0
    else:
        attn[1, 6:] = 0
        attn[3, 3:] = 0
    prompts[attn == 0] = PAD
    assert (2 * beams > len({s[0] for s in items})) == (beams == 15)
    exclusion = None
    if excluded:
        # prompt 3 keeps 4 items, fewer than the beams: HF fills the rest from -1e9 copies
        exclusion = trie.exclusion([{"it0", "it3"}, set(), {f"it{k}" for k in range(0, len(items), 2)},
                                    {f"it{k}" for k in range(4, len(items))}])
    proc = TrieLogitsProcessor(trie, 0, not decoder_only, exclusion=exclusion, group_size=beams)
    embeds = model.get_input_embeddings()(prompts).detach()
    with torch.no_grad():
        want = model.generate(inputs_embeds=embeds, attention_mask=attn, num_beams=beams,
                              num_return_sequences=beams, max_new_tokens=trie.max_len, do_sample=False,
                              early_stopping=True, length_penalty=length_penalty, pad_token_id=PAD,
                              eos_token_id=EOS, logits_processor=[proc], output_scores=True,
                              return_dict_in_generate=True)
    got, scores = trie_beams(model, embeds, attn, trie, beams, exclusion, length_penalty=length_penalty,
                             with_scores=True)
    # the same scores too (so positions, masks and caches match, not only the order they produce)
    assert torch.allclose(scores, want.sequences_scores, atol=1e-5, rtol=0)
    want = want.sequences
    cut = 0 if decoder_only else 1  # an encoder-decoder's rows start with the decoder start token
    assert got.shape[0] == want.shape[0] == 4 * beams
    # prompt 3, when excluded, keeps 4 items for more beams: the other slots repeat an item or hold
    # none, as HF's do (no item: HF fills the slot with eos, trie_beams with pad)
    def items_of(out):
        return [tuple(_strip(s[cut:])) if trie.contains(_strip(s[cut:])) else None for s in out]

    assert items_of(got) == items_of(want)
    last = set(items_of(got)[3 * beams:]) - {None}
    assert last <= {tuple(s) for s in items[:4]} if excluded else len(last) == beams
    lengths = {len(_strip(s[cut:])) for s in got}
    assert len(lengths) > 1  # beams of different lengths met, so the length penalty was in play
