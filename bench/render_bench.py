"""Benchmark: one training epoch's rows, rendered and put in training order.

Times p5x.training.render_epochs (render, shuffle and length-bucket with Arrow `take`) against the
datasets pipeline it replaced (Dataset.shuffle -> flatten_indices -> select(bucket_order) ->
flatten_indices), and checks both give the same rows in the same order.

    python bench/render_bench.py --data DIR [--tasks sequential,direct] [--batch-size 128]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", required=True, help="normalized dataset directory")
    ap.add_argument("--tasks", default="sequential,direct", help="comma list of families")
    ap.add_argument("--batch-size", type=int, default=128, help="length-bucketing batch size (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import datasets

    from p5x import tasks
    from p5x.errors import P5XError
    from p5x.schema import load_dataset
    from p5x.training import bucket_order, render_epochs

    try:
        ctx = tasks.make_context(load_dataset(args.data), seed=args.seed)
        fams = args.tasks.split(",")
        tasks.render(ctx, fams, "train", epoch=1)  # builds the context's caches (catalogue, ...) once
        t0 = time.perf_counter()
        rows = tasks.render(ctx, fams, "train", epoch=0)
        render_s = time.perf_counter() - t0
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    new = render_epochs(ctx, fams, 1, args.seed, batch_size=args.batch_size)
    new_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    old = tasks.render(ctx, fams, "train", epoch=0).shuffle(seed=args.seed).flatten_indices()
    if args.batch_size:
        old = old.select(bucket_order([len(s) for s in old["inputs"]], args.batch_size, args.seed))
    old = datasets.concatenate_datasets([old]).flatten_indices()
    old_s = time.perf_counter() - t0
    same = len(new) == len(old) and new["inputs"] == old["inputs"] and new["targets"] == old["targets"]
    print(f"rows: {len(new)}; render alone {render_s:.1f} s")
    print(f"render_epochs (Arrow take): {new_s:.1f} s, of which reordering ~{new_s - render_s:.1f} s")
    print(f"datasets shuffle/select/flatten_indices: {old_s:.1f} s, of which reordering ~{old_s - render_s:.1f} s")
    print(f"same rows in the same order: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
