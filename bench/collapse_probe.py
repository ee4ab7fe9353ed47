"""Probe: can a from-scratch p5x T5 learn the toy successor rule, and what in the prompt mixture stops it?

The toy dataset (p5x.toydata) walks users along item cycles, so the next item is always the
successor of the last one (a bigram on training histories scores 1.0). This script trains the
run's own backbone (t5-tiny by default) with p5x's tokenizer, featurizer and model in a plain loop
and prints the top-1 accuracy of the first decoded token on the validation targets, so the prompt
mixture can be varied one factor at a time:

    python bench/collapse_probe.py --prompt text --kinds all     # what train.py trains on
    python bench/collapse_probe.py --prompt text --kinds next    # next-item prompts only
    python bench/collapse_probe.py --prompt ids --kinds next     # the id sequence alone
    ... --whole-word off
    python bench/collapse_probe.py --kinds all --next-weight 4     # next-item rows repeated 4x
    python bench/collapse_probe.py --kinds all --next-first 2000   # next-item rows alone first
    ... --data p5x/sample_data/gift_cards                         # a real dataset instead of the toy

Atomic ids (one token per item) make the first decoded token the whole answer.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile

import numpy as np
import torch

from p5x.features import Featurizer
from p5x.modeling import resolve_backbone
from p5x.schema import load_dataset
from p5x.split import time_split
from p5x.tasks import make_context, render
from p5x.toydata import make_toy_dataset
from p5x.training import TrainConfig, build_model, build_tokenizer, task_rows

ID = re.compile(r"<i0_\d+>")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompt", choices=("text", "ids", "ids-reversed", "last"), default="text",
                   help="text: the rendered templates; ids: only the item ids of each prompt; ids-reversed: "
                   "the same, most recent first; last: only the last id (a pure last-item lookup)")
    p.add_argument("--kinds", choices=("all", "next"), default="all",
                   help="all: every sequential kind (next, candidates, yes/no); next: next-item rows only")
    p.add_argument("--next-weight", type=int, default=1,
                   help="with --kinds all: repeat every next-item row this many times in the epoch")
    p.add_argument("--next-first", type=int, default=0,
                   help="with --kinds all: train on next-item rows only for this many steps, then on all")
    p.add_argument("--continuation", type=int, default=0,
                   help="with --prompt ids/ids-reversed/last: instead of the rendered rows, one row per cut of "
                   "every training sequence (as SASRec sees it), whose target is the next K items in order "
                   "(K targets per row; 1 = the next item only)")
    p.add_argument("--whole-word", choices=("on", "off"), default="on")
    p.add_argument("--embed-std", type=float, default=0.0,
                   help="re-initialise the token embedding table (tied to the output layer) with this std; "
                   "0 keeps the backbone's own initialisation (T5: std 1.0)")
    p.add_argument("--item-init", choices=("random", "cooc", "markov"), default="random",
                   help="item-token embeddings at the start (p5x.iteminit; cooc: from training co-occurrence; "
                   "markov: a next-item model fitted to the training histories)")
    p.add_argument("--model", default="t5-tiny")
    p.add_argument("--data", default="", help="a normalized dataset instead of the toy one (e.g. the bundled "
                   "sample, p5x/sample_data/gift_cards); the accuracy is then measured on its validation part")
    p.add_argument("--users", type=int, default=1000, help="toy users")
    p.add_argument("--items", type=int, default=148, help="toy items")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--every", type=int, default=200, help="report every N steps")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if (a.steps < 1 or a.every < 1 or a.users < 3 or a.items < 8 or a.next_weight < 1 or a.next_first < 0
            or a.continuation < 0):
        p.error("--steps/--every/--next-weight must be >= 1, --next-first/--continuation >= 0, --users >= 3, "
                "--items >= 8")
    if a.continuation and a.prompt == "text":
        p.error("--continuation: with --prompt ids, ids-reversed or last")
    torch.manual_seed(a.seed)
    if a.data:
        ds = load_dataset(a.data)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            make_toy_dataset(tmp, n_users=a.users, n_items=a.items, seed=a.seed)
            ds = load_dataset(tmp)
    cfg = TrainConfig(data=a.data or "toy", tasks="sequential", index="atomic", epochs=1, seed=a.seed, bf16="off",
                      model=a.model, whole_word_embeddings=a.whole_word).validate()
    spec = resolve_backbone(a.model)
    if spec.decoder_only:
        p.error("--model: an encoder-decoder (T5) backbone")
    ix, ux, rendered = task_rows(ds, cfg)
    split = time_split(ds)  # the training part: continuation rows and the cooc init read it

    def prep(text):
        ids = ID.findall(text)
        if a.prompt == "ids":
            return " ".join(ids)
        if a.prompt == "ids-reversed":
            return " ".join(reversed(ids))
        if a.prompt == "last":
            return ids[-1] if ids else ""
        return text

    pairs = [({"inputs": prep(r["inputs"]), "targets": r["targets"]}, r["kind"] == "next") for r in rendered]
    if a.continuation:
        from p5x.tasks import HISTORY_LEN

        pairs = []
        for xs in split.train.values():
            codes = [ix.codes[x.item_id][0] for x in xs]
            for t in range(1, len(codes)):
                pairs.append(({"inputs": prep(" ".join(codes[max(0, t - HISTORY_LEN):t])),
                               "targets": " ".join(codes[t:t + a.continuation])}, True))
    next_rows = [row for row, is_next in pairs if is_next]
    rows = [row for row, is_next in pairs if a.kinds == "all" or is_next
            for _ in range(a.next_weight if is_next else 1)]
    tok = build_tokenizer(cfg, spec, list(ix.pieces()) + list(ux.pieces()), rendered, ds, None)
    model = build_model(cfg, spec, tok)
    if a.embed_std > 0:
        with torch.no_grad():
            model.backbone.get_input_embeddings().weight.normal_(0.0, a.embed_std)
    if a.item_init != "random":
        from p5x.iteminit import init_item_embeddings

        init_item_embeddings(model, tok, ix, split, a.seed, method=a.item_init)
    feat = Featurizer(tok, False, a.whole_word == "on", cfg.max_source_len, cfg.max_target_len, cfg.max_words)
    val = render(make_context(ds, "atomic", a.seed, index=ix, user_index=ux), ["sequential"], "valid",
                 templates=["sequential-1"])
    val_in = [prep(t) for t in val["inputs"]]
    val_tgt = torch.tensor(tok.convert_tokens_to_ids([ix.codes[i][0] for i in val["item_id"]]))
    item_tok = torch.tensor(tok.convert_tokens_to_ids(sorted(ix.pieces())))

    val_batches = [(i, feat.encode_prompts(val_in[i:i + 128])) for i in range(0, len(val_in), 128)]  # once

    @torch.no_grad()
    def accuracy() -> float:
        model.eval()
        hits = 0
        for i, b in val_batches:
            start = torch.full((b["input_ids"].shape[0], 1), model.config.decoder_start_token_id)
            logits = model(**b, decoder_input_ids=start).logits[:, 0]  # the first answer step
            hits += int((item_tok[logits[:, item_tok].argmax(-1)] == val_tgt[i:i + 128]).sum())
        model.train()
        return hits / len(val_in)

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    order = np.random.default_rng(a.seed).permutation(len(rows))
    next_order = np.random.default_rng(a.seed).permutation(len(next_rows))
    print(f"{len(rows)} training rows ({a.prompt}, kinds {a.kinds}, next x{a.next_weight}, next-only for "
          f"{a.next_first} steps, whole-word {a.whole_word}); "
          f"{len(val_in)} validation users; e.g. {rows[-1]['inputs']!r} -> {rows[-1]['targets']!r}")
    model.train()
    for step in range(1, a.steps + 1):
        if step <= a.next_first:  # curriculum: next-item rows first
            k = ((step - 1) * a.batch_size) % len(next_rows)
            batch = feat([next_rows[j] for j in next_order[k:k + a.batch_size]])
        else:
            k = ((step - 1 - a.next_first) * a.batch_size) % len(rows)
            batch = feat([rows[j] for j in order[k:k + a.batch_size]])
        batch.pop("task_ids", None)
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % a.every == 0 or step == a.steps:
            print(f"step {step}: loss {loss.item():.3f}, validation top-1 accuracy {accuracy():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
