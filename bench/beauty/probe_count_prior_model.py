"""Probe (session 38; a bench script, not part of the library): rank a one-token p5x checkpoint's
next-item prompts by the model's log P + W x p5x.content's prior + beta x the last-item transition
log P (p5x.baselines.TransitionScorer.log_probs), through p5x.inference.rank_items' prior hook.

Usage: python bench/beauty/probe_count_prior_model.py CHECKPOINT DATA valid|test B1,B2,.. [W [TEMPLATE_IDS]]
"""
import sys, time, json
import numpy as np
from pathlib import Path
from p5x.evaluate import EvalConfig, Evaluator, _prior_fields
from p5x.checkpoint import load_checkpoint, read_config
from p5x.schema import load_dataset
from p5x.tasks import render
from p5x.inference import rank_items
from p5x.baselines import TransitionScorer
from p5x import metrics as M
from dataclasses import replace

ckpt_dir, data, split = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
betas = [float(x) for x in sys.argv[4].split(",")]
W = float(sys.argv[5]) if len(sys.argv) > 5 else 6.0
tids = sys.argv[6].split(",") if len(sys.argv) > 6 else ["sequential-1"]
ds = load_dataset(data)
ckpt = load_checkpoint(ckpt_dir, data=ds, device="cpu")
cfg = EvalConfig(checkpoint=ckpt_dir, tasks="sequential", split=split, baselines=False, progress=False,
                 batch_size=64, content_prior=W)
cfg = replace(cfg, **_prior_fields(cfg, read_config(ckpt_dir)))
ev = Evaluator(ckpt, ds, cfg)
C = ev.content_prior()
T = TransitionScorer(ev.ctx.split, list(C.items))

class Mix:
    def __init__(self, beta): self.items, self.beta = C.items, beta
    def scores(self, h):
        s = W * C.scores(h)
        if self.beta:
            s = s + self.beta * T.log_probs(h).numpy().astype(np.float32)
        return s

for tid in tids:
    rows = render(ev.ctx, ["sequential"], split, templates=[tid])
    rows = rows.select([i for i, k in enumerate(rows["kind"]) if k == "next"])
    hist = [ev.ctx.split.history_ids(u, split) for u in rows["user_id"]]
    for b in betas:
        t0 = time.time()
        ranked, _ = rank_items(ckpt, rows["inputs"], ev.trie, 20, 64, progress=False,
                               prior=(Mix(b), hist, 1.0) if (W or b) else None)
        m = M.ranking_metrics(ranked, rows["item_id"], (5, 10))
        print(json.dumps({"tid": tid, "W": W, "beta": b, "n": len(ranked), **{k: round(v, 4) for k, v in m.items() if isinstance(v, float)},
                          "sec": round(time.time() - t0)}), flush=True)
