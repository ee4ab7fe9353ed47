"""Probe (session 38; a bench script, not part of the library): rank Beauty's users by the
markov-untied next-item model's log P + W x p5x.content's prior + beta x the last-item transition
log P (p5x.baselines.TransitionScorer.log_probs, smoothing 100), and print NDCG@10 / HR@10 / HR@5 for
each combination. The markov fit is cached under ~/.cache/p5x (seed 0, rank 64).

Usage: python bench/beauty/probe_count_prior.py DATA valid|test W1,W2,.. B1,B2,.. [ALPHA1,..]
"""
import sys, time, itertools
import numpy as np, torch
from p5x.schema import load_dataset
from p5x.split import time_split
from p5x.baselines import FactorScorer, TransitionScorer
from p5x.content import ContentPrior
from p5x import metrics as M

data, part = sys.argv[1], sys.argv[2]
Ws = [float(x) for x in sys.argv[3].split(",")]
betas = [float(x) for x in sys.argv[4].split(",")]
alphas = [float(x) for x in sys.argv[5].split(",")] if len(sys.argv) > 5 else [1.0]  # weight on markov
ds = load_dataset(data); split = time_split(ds)
items = list(ds.items); pos = {i: k for k, i in enumerate(items)}
users = split.eval_users(part)
hist = [split.history_ids(u, part) for u in users]
tgt = np.array([pos[split.target(u, part).item_id] for u in users])
t0 = time.time()
F = FactorScorer(split, items, 64, "markov-untied", 0)
T = TransitionScorer(split, items)
C = ContentPrior(ds, items)
print("built", round(time.time() - t0), flush=True)
combos = list(itertools.product(alphas, Ws, betas))
ranks = {c: [] for c in combos}  # 0-based rank of each user's target, per combination
for s in range(0, len(users), 1024):
    h = hist[s:s + 1024]; t = torch.from_numpy(tgt[s:s + 1024])
    m = F.log_probs(h).float(); c = torch.from_numpy(C.scores(h)); tr = T.log_probs(h).float()
    for a, w, b in combos:
        S = a * m + w * c + b * tr
        st = S.gather(1, t[:, None])
        ranks[(a, w, b)].append((S > st).sum(1).numpy())
for k, r in ranks.items():
    r = np.concatenate(r)
    print(f"alpha {k[0]:g} W {k[1]:g} beta {k[2]:g}: NDCG@10 {M.ndcg_at_k(None, None, 10, ranks=r):.4f} "
          f"HR@10 {M.hit_rate_at_k(None, None, 10, ranks=r):.4f} HR@5 {M.hit_rate_at_k(None, None, 5, ranks=r):.4f}",
          flush=True)
print("sec", round(time.time() - t0))
