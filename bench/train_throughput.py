"""Benchmark: training throughput of one backbone and batch size on the current device.

Renders one training epoch of a normalized dataset (p5x.tasks, length-bucketed as p5x.training does),
builds the tokenizer and the model exactly as train.py would, then times plain optimizer steps
(AdamW, bf16 autocast on CUDA, float32 on CPU) after a few warm-up steps and reports:

- samples/s, tokens/s (prompt + target tokens, padding excluded) and padded tokens/s;
- the share of wall time spent waiting for batches (collation + host-to-device copy), and the
  collation cost per batch both for raw rows (tokenize + pad) and for pre-tokenized rows (pad only);
- an MFU estimate, when --peak-flops is given: 6 x params x tokens / time / peak, with each token
  counted against the weights it passes through (T5: encoder weights x prompt tokens, decoder
  weights + output projection x target tokens; decoder-only: all weights x all tokens). Attention's
  quadratic term is left out (an underestimate); for decoder-only models the output projection
  runs only at the answer positions (unless --full-vocab-loss), so there MFU is overstated;
- the projected time of one epoch of these families: rows per epoch / measured samples/s.

    python bench/train_throughput.py --data DIR --tasks sequential,direct --model t5-small \\
        --batch-size 64 --steps 50 --device cuda --peak-flops 989e12 --json throughput.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from p5x.errors import ConfigError, P5XError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python bench/train_throughput.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="normalized dataset directory")
    ap.add_argument("--tasks", default="sequential,direct", help="'all' or a comma list of families")
    ap.add_argument("--model", default="t5-small", help="backbone name (see train.py --help)")
    ap.add_argument("--batch-size", type=int, default=64, help="rows per optimizer step")
    ap.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, kernels)")
    ap.add_argument("--users", type=int, default=0, help="render only the first N users (0: all)")
    ap.add_argument("--tokenizer", help="a saved tokenizer directory (e.g. RUN/pretokenized/tokenizer); "
                    "default: train a SentencePiece vocabulary on the rendered rows")
    ap.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece vocabulary size")
    ap.add_argument("--whole-word-embeddings", default="on", choices=("on", "off"))
    ap.add_argument("--max-source-len", type=int, default=512)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--peak-flops", type=float, default=0.0,
                    help="device peak FLOP/s for the MFU estimate (H100 SXM bf16 dense: 989e12; 0: no MFU)")
    ap.add_argument("--full-vocab-loss", action="store_true",
                    help="decoder-only: the backbone's own loss over every position, right-padded (p5x before "
                         "fd68fd4), to measure against p5x's answer-position logits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the numbers to this file")
    return ap


def param_split(model) -> dict[str, int]:
    """Weights each token passes through, by side: matmul weights only (embedding lookups are free)."""
    bb = model.backbone
    emb = {id(p) for p in bb.get_input_embeddings().parameters()}
    head = bb.get_output_embeddings().weight
    if model.decoder_only:
        body = sum(p.numel() for p in bb.parameters() if id(p) not in emb and p is not head)
        return {"decoder": body + head.numel(), "encoder": 0}
    enc = sum(p.numel() for p in bb.get_encoder().parameters() if id(p) not in emb)
    dec = sum(p.numel() for p in bb.get_decoder().parameters() if id(p) not in emb)
    return {"encoder": enc, "decoder": dec + head.numel()}


def batch_tokens(batch: dict, decoder_only: bool) -> tuple[int, int, int]:
    """(real prompt tokens, real target tokens, padded tokens); decoder-only counts all as one sequence."""
    src = int(batch["attention_mask"].sum())
    if decoder_only:
        return 0, src, batch["input_ids"].numel()
    tgt = int((batch["labels"] != -100).sum())
    return src, tgt, batch["input_ids"].numel() + batch["labels"].numel()


def prepare(args, workdir: str):
    """(rows of one bucketed epoch, featurizer, model config objects) built the way train.py builds them."""
    from transformers import AutoTokenizer

    from p5x import tasks
    from p5x.features import Featurizer
    from p5x.modeling import resolve_backbone
    from p5x.schema import load_dataset
    from p5x.tokenization import train_sentencepiece
    from p5x.training import TrainConfig, bucket_order, build_model

    cfg = TrainConfig(data=args.data, tasks=args.tasks, model=args.model, batch_size=args.batch_size,
                      seed=args.seed, whole_word_embeddings=args.whole_word_embeddings,
                      max_source_len=args.max_source_len, vocab_size=args.vocab_size).validate()
    ds = load_dataset(args.data)
    ctx = tasks.make_context(ds, seed=args.seed)
    users = sorted(ctx.split.train)[: args.users] if args.users else None
    t0 = time.perf_counter()
    rows = tasks.render(ctx, cfg.families(), "train", epoch=0, users=users).shuffle(seed=args.seed)
    rows = rows.select(bucket_order([len(s) for s in rows["inputs"]], args.batch_size, args.seed)).flatten_indices()
    render_s = time.perf_counter() - t0
    spec = resolve_backbone(args.model)
    pieces = list(ctx.index.pieces()) + list(ctx.user_index.pieces())
    if args.tokenizer:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        sample = rows.select(range(min(len(rows), 50_000)))
        texts = (t for r in sample for t in (r["inputs"], r["targets"]))
        tok = train_sentencepiece(texts, workdir, vocab_size=args.vocab_size,
                                  user_defined_symbols=pieces)
    side = "left" if spec.decoder_only and not args.full_vocab_loss else "right"  # as train.py pads
    feat = Featurizer(tok, spec.decoder_only, args.whole_word_embeddings == "on", args.max_source_len, 64,
                      padding_side=side)
    model = build_model(cfg, spec, tok)
    return rows, feat, model, render_s, len(rows) if not args.users else None


def collate_costs(rows, feat, batch_size: int, n: int = 10) -> dict[str, float]:
    """Milliseconds per batch: Featurizer on raw rows vs padding of pre-tokenized rows."""
    from p5x.training import PaddingCollator, encode_rows

    pad = PaddingCollator(feat)
    raw_s = pad_s = 0.0
    n = max(1, min(n, len(rows) // batch_size))
    for b in range(n):
        chunk = rows.select(range(b * batch_size, (b + 1) * batch_size)).to_list()
        t0 = time.perf_counter()
        feat(chunk)
        raw_s += time.perf_counter() - t0
        enc = encode_rows(feat, {"inputs": [r["inputs"] for r in chunk], "targets": [r["targets"] for r in chunk]})
        pre = [{k: enc[k][i] for k in enc} | {"task": r["task"]} for i, r in enumerate(chunk)]
        t0 = time.perf_counter()
        pad(pre)
        pad_s += time.perf_counter() - t0
    return {"featurize_ms_per_batch": 1000 * raw_s / n, "pad_only_ms_per_batch": 1000 * pad_s / n}


def timed_steps(model, rows, feat, args, device: str) -> dict:
    """Warm-up, then timed optimizer steps over consecutive bucketed batches (wrapping around)."""
    from p5x.training import PaddingCollator, pretokenize

    cuda = device.startswith("cuda")
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    need = (args.warmup + args.steps) * args.batch_size
    sub = rows.select(np.arange(need) % len(rows))
    pre = pretokenize(sub, feat)  # as train.py --pretokenize: the timed loop only pads
    pad = PaddingCollator(feat)
    loader = torch.utils.data.DataLoader(pre, batch_size=args.batch_size, collate_fn=pad, shuffle=False)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    it = iter(loader)
    stats = {"samples": 0, "src": 0, "tgt": 0, "padded": 0, "wait_s": 0.0}
    t_start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync()
            t_start = time.perf_counter()
        t0 = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in next(it).items() if k != "task_ids"}
        wait = time.perf_counter() - t0
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            if args.full_vocab_loss and model.decoder_only:
                embeds = model.embed(batch["input_ids"], batch.get("whole_word_ids"))
                loss = model.backbone(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                      labels=batch["labels"],
                                      position_ids=model._positions(batch["attention_mask"])).loss
            else:
                loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            s, t, p = batch_tokens(batch, model.decoder_only)
            stats["samples"] += batch["input_ids"].shape[0]
            stats["src"] += s
            stats["tgt"] += t
            stats["padded"] += p
            stats["wait_s"] += wait
    sync()
    stats["seconds"] = time.perf_counter() - t_start
    return stats


def run(args) -> dict:
    if args.steps < 1 or args.batch_size < 1 or args.warmup < 0:
        raise ConfigError("--steps and --batch-size must be positive, --warmup not negative")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device")
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="p5x-tput-") as workdir:  # the SentencePiece files, removed after
        rows, feat, model, render_s, epoch_rows = prepare(args, workdir)
    costs = collate_costs(rows, feat, args.batch_size)
    st = timed_steps(model, rows, feat, args, device)
    sec = st["seconds"]
    tokens = st["src"] + st["tgt"]
    ps = param_split(model)
    flops = 6 * (ps["encoder"] * st["src"] + ps["decoder"] * st["tgt"])
    from p5x.metrics import device_name

    res = {"device": device_name(device), "model": args.model, "tasks": args.tasks, "batch_size": args.batch_size,
           "steps": args.steps, "bf16": device.startswith("cuda"),
           "full_vocab_loss": bool(args.full_vocab_loss), "params": sum(p.numel() for p in model.parameters()),
           "params_per_token": ps, "render_epoch_s": round(render_s, 2), "rows_rendered": len(rows),
           "samples_per_s": st["samples"] / sec, "tokens_per_s": tokens / sec, "padded_tokens_per_s": st["padded"] / sec,
           "padding_share": 1 - tokens / max(1, st["padded"]), "step_ms": 1000 * sec / args.steps,
           "data_wait_share": st["wait_s"] / sec, **costs,
           "model_tflops_per_s": flops / sec / 1e12}
    if args.peak_flops > 0:
        res["peak_flops"] = args.peak_flops
        res["mfu"] = flops / sec / args.peak_flops
    if epoch_rows:
        res["epoch_rows"] = epoch_rows
        res["epoch_s_projected"] = epoch_rows / res["samples_per_s"]
    return res


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        res = run(args)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name("." + out.name + ".tmp")
        tmp.write_text(json.dumps(res, indent=2))
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
