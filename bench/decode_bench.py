"""Benchmark: constrained beam search with p5x's tensor trie vs HF's prefix_allowed_tokens_fn.

Builds a T5 from a config with random weights and a catalogue of fake item token sequences, then
decodes the same batches of "users" three ways:

    trie        logits_processor=[TrieLogitsProcessor]   (p5x.decoding, vectorised)
    prefix_fn   prefix_allowed_tokens_fn=...             (HF's per-row Python callback)
    free        no constraint                             (the floor: model cost alone)
    own         p5x.inference.trie_beams                  (p5x's own beam search, what p5x.evaluate
                                                           runs on T5: the same beams, with the encoder
                                                           and cross-attention once per prompt)
    one_token   p5x.inference.one_token_beams             (only with --item-len 1, the atomic index:
                                                           the same beams without HF's beam search)

checks that the constrained runs return token-identical sequences, and prints ms per user.

    python bench/decode_bench.py --device cpu --items 2000 --users 8 --beams 20
    python bench/decode_bench.py --device cuda --items 12000 --users 256 --batch 32 --beams 20
    python bench/decode_bench.py --device cpu --items 12101 --item-len 1 --vocab 13200 --users 32 --batch 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from p5x.decoding import ItemTrie, TrieLogitsProcessor, make_prefix_allowed_tokens_fn
from p5x.inference import one_token_beams, trie_beams

PAD, EOS = 0, 1


def fake_items(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """n distinct random token sequences of `length` tokens (from ids 2..vocab-1) plus eos."""
    g = torch.Generator().manual_seed(seed)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < n:
        for row in torch.randint(2, vocab, (n, length), generator=g).tolist():
            seen.add(tuple(row))
            if len(seen) == n:
                break
    return [list(s) + [EOS] for s in sorted(seen)]


def build_model(vocab: int, d_model: int, layers: int, device: str, arch: str = "t5"):
    torch.manual_seed(0)
    if arch == "llama":  # SmolLM2-135M's shape is --d-model 576 --layers 30 --vocab 49152
        heads = max(1, d_model // 64)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=8 * d_model // 3,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=3 if heads % 3 == 0 else heads,
                          pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2, tie_word_embeddings=True,
                          max_position_embeddings=2048)
        return LlamaForCausalLM(cfg).to(device).eval()
    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // 8, d_ff=4 * d_model, num_layers=layers,
                   num_decoder_layers=layers, num_heads=8, pad_token_id=PAD, eos_token_id=EOS,
                   decoder_start_token_id=PAD)
    return T5ForConditionalGeneration(cfg).to(device).eval()


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(decode, batches, device, max_new):
    """Run `decode(ids)` on every batch; returns (concatenated sequences, total seconds)."""
    outs, total = [], 0.0
    for ids in batches:
        ids = ids.to(device)
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = decode(ids)
        _sync(device)
        total += time.perf_counter() - t0
        # pad to a common width so batches can be compared as one tensor
        outs.append(torch.nn.functional.pad(out, (0, max_new + 1 - out.shape[1]), value=PAD).cpu())
    return torch.cat(outs), total


def _decoder_only(model) -> bool:
    return not model.config.is_encoder_decoder


def _as_t5_layout(model, out, src_len=0):
    """A decoder-only model's new tokens behind a pad column, as a T5's follow its start token."""
    if not _decoder_only(model):
        return out
    return torch.nn.functional.pad(out[:, src_len:], (1, 0), value=PAD)


def timed_generate(model, batches, device, beams, max_new, **kw):
    """HF beam search (with whatever constraint `kw` adds) on every batch."""
    return timed(lambda ids: _as_t5_layout(model, model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=beams, num_return_sequences=beams,
        max_new_tokens=max_new, do_sample=False, early_stopping=True, **kw), ids.shape[1]), batches, device, max_new)


def timed_own(model, batches, device, beams, max_new, trie):
    """`trie_beams` on every batch (its output has generate's layout)."""
    return timed(lambda ids: _as_t5_layout(model, trie_beams(model, model.get_input_embeddings()(ids),
                                                             torch.ones_like(ids), trie, beams)),
                 batches, device, max_new)


def timed_one_token(model, batches, device, beams, max_new, trie):
    """`one_token_beams` on every batch, laid out like `timed_generate`'s output."""
    return timed(lambda ids: one_token_beams(model, model.get_input_embeddings()(ids), torch.ones_like(ids), trie,
                                             beams), batches, device, max_new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--items", type=int, default=12000, help="catalogue size")
    ap.add_argument("--item-len", type=int, default=4, help="tokens per item id (eos comes on top)")
    ap.add_argument("--vocab", type=int, default=32100, help="model vocabulary size")
    ap.add_argument("--item-vocab", type=int, default=600, help="item tokens are drawn from ids 2..N-1")
    ap.add_argument("--users", type=int, default=64, help="users decoded in total")
    ap.add_argument("--batch", type=int, default=16, help="users per generate call")
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--src-len", type=int, default=64, help="prompt length in tokens")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--arch", default="t5", choices=("t5", "llama"),
                    help="encoder-decoder (T5 shape) or decoder-only (LLaMA shape: prompt_len counts the prompt)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per mode (the best is kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device", file=sys.stderr)
        return 2

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    items = fake_items(args.items, args.item_len, min(args.item_vocab, args.vocab), seed=0)
    t0 = time.perf_counter()
    trie = ItemTrie(items, eos_id=EOS, vocab_size=args.vocab, pad_id=PAD).to(args.device)
    build_s = time.perf_counter() - t0
    if args.arch == "llama" and args.item_len == 1:
        print("error: --item-len 1 (one_token_beams) is for --arch t5 only", file=sys.stderr)
        return 2
    model = build_model(args.vocab, args.d_model, args.layers, args.device, args.arch)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(2, args.vocab, (args.users, args.src_len), generator=g)
    batches = list(prompts.split(args.batch))
    max_new = args.item_len + 1
    kw = dict(pad_token_id=PAD, eos_token_id=EOS)

    timed_generate(model, batches[:1], args.device, args.beams, max_new, **kw)  # warm-up
    plen = args.src_len if args.arch == "llama" else 0  # HF hands a decoder-only processor the prompt too
    modes = {
        "free": {},
        "trie": {"logits_processor": [TrieLogitsProcessor(trie, plen, args.arch == "t5")]},
        "prefix_fn": {"prefix_allowed_tokens_fn": make_prefix_allowed_tokens_fn(trie, plen, args.arch == "t5")},
        "own": None,
    }
    # modes interleaved over repeats, best time kept: the machine may be shared and noisy
    if args.item_len == 1:
        modes["one_token"] = None
    best, outs = {m: float("inf") for m in modes}, {}
    for _ in range(args.repeats):
        for m, extra in modes.items():
            if m == "one_token":
                outs[m], sec = timed_one_token(model, batches, args.device, args.beams, max_new, trie)
            elif m == "own":
                outs[m], sec = timed_own(model, batches, args.device, args.beams, max_new, trie)
            else:
                outs[m], sec = timed_generate(model, batches, args.device, args.beams, max_new, **kw, **extra)
            best[m] = min(best[m], sec)
    free, fast, slow = outs["free"], outs["trie"], outs["prefix_fn"]
    t_free, t_trie, t_fn = best["free"], best["trie"], best["prefix_fn"]
    # the same items in the same order (HF fills after eos with eos or pad, trie_beams with pad)
    items_of = lambda out: [_item(s) for s in out]  # noqa: E731
    identical = (torch.equal(fast, slow) and items_of(outs["own"]) == items_of(fast)
                 and ("one_token" not in outs or torch.equal(outs["one_token"], fast)))
    valid = sum(trie.contains(_item(s)) for s in fast) / len(fast)
    free_valid = sum(trie.contains(_item(s)) for s in free) / len(free)
    res = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "arch": args.arch, "items": args.items, "item_len": args.item_len, "vocab": args.vocab, "beams": args.beams,
        "users": args.users, "batch": args.batch, "repeats": args.repeats, "d_model": args.d_model, "layers": args.layers,
        "trie_nodes": trie.num_nodes, "trie_build_s": round(build_s, 3),
        "ms_per_user": {"trie": 1000 * t_trie / args.users, "prefix_fn": 1000 * t_fn / args.users,
                        "free": 1000 * t_free / args.users, "own": 1000 * best["own"] / args.users,
                        **({"one_token": 1000 * best["one_token"] / args.users} if "one_token" in best else {})},
        "identical": identical, "valid_rate": {"trie": valid, "free": free_valid},
    }
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    if not identical:
        print("error: the constrained outputs differ (trie, prefix_fn, own, one_token)", file=sys.stderr)
        return 1
    return 0


def _item(seq: torch.Tensor) -> list[int]:
    s = seq.tolist()[1:]  # drop the decoder start token
    return s[: s.index(EOS) + 1] if EOS in s else s


if __name__ == "__main__":
    sys.exit(main())
