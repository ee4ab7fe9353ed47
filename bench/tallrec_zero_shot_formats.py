"""Zero-shot AUC of an untuned causal LM on p5x.fewshot's held-out rows, in two answer formats.

    python bench/tallrec_zero_shot_formats.py --data DIR --model DIR [--eval-users 200]

"current": the preference-1 prompt as p5x renders it (ending in "Answer:") and the answer tokens
' yes' / ' no' (what p5x trains and scores on a byte-level tokenizer). "previous": the same prompt
without the "Answer:" cue and the answer glued to it ('yes' / 'no'), p5x's format before the
target-space change. Both on exactly the held-out users and rows of `python -m p5x.fewshot`
(--eval-users, --holdout-seed 0), so the untuned model is compared under its better format too.
--model is a local HF directory (e.g. from `python -m p5x.modeling export smollm2-135m DIR`).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from p5x import fewshot as F
from p5x import metrics as M
from p5x.schema import load_dataset
from p5x.tasks import make_context

CUE = " Answer:"


def p_yes(model, tok, prompts, yes: str, no: str, batch: int = 16) -> np.ndarray:
    iy, ino = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (yes, no))
    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch):
            enc = tok(prompts[s:s + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            logits = model(**enc).logits[:, -1]
            out.append(torch.stack([logits[:, iy], logits[:, ino]], -1).softmax(-1)[:, 0].numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True, help="local HF causal-LM directory")
    ap.add_argument("--eval-users", type=int, default=200)
    ap.add_argument("--holdout-seed", type=int, default=0)
    a = ap.parse_args()
    ctx = make_context(load_dataset(a.data), seed=0)
    rows = F.eval_rows(ctx, F.holdout_users(ctx.split, a.eval_users, a.holdout_seed))
    labels = np.asarray(rows["label"], dtype=float)
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(a.model).eval()
    prompts = list(rows["inputs"])
    if not all(p.endswith(CUE) for p in prompts):
        raise SystemExit(f"error: the evaluation template no longer ends with {CUE.strip()!r}")
    previous = [p[: -len(CUE)] for p in prompts]
    print(f"{len(prompts)} rows, {int(labels.sum())} liked")
    print("| format | AUC | mean P(yes) |\n|---|---|---|")
    for name, ps, yes, no in (("current: 'Answer:' cue, ' yes' / ' no'", prompts, " yes", " no"),
                              ("previous: no cue, glued 'yes' / 'no'", previous, "yes", "no")):
        p = p_yes(model, tok, ps, yes, no)
        print(f"| {name} | {M.auc(labels, p):.4f} | {p.mean():.3f} |")


if __name__ == "__main__":
    main()
