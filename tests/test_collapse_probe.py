"""bench/collapse_probe.py runs end to end on a small toy set and reports what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "collapse_probe.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_collapse_probe_reports_accuracy():
    r = _run("--users", "30", "--items", "24", "--steps", "4", "--every", "2", "--prompt", "ids", "--kinds", "next")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("step ")]
    assert [ln.split(":")[0] for ln in lines] == ["step 2", "step 4"]
    acc = float(lines[-1].rsplit(" ", 1)[1])
    assert 0.0 <= acc <= 1.0
    head = r.stdout.splitlines()[0]
    assert "(ids, kinds next, next x1, next-only for 0 steps, whole-word on)" in head and "'<i0_" in head
    assert "validation users" in head


def _rows(r):
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split(" training rows", 1)[0])


def test_next_weight_repeats_the_next_item_rows():
    toy = ("--users", "30", "--items", "24", "--steps", "2", "--every", "2", "--prompt", "ids")
    n_next = _rows(_run(*toy, "--kinds", "next"))
    n_all = _rows(_run(*toy, "--kinds", "all"))
    curriculum = _run(*toy, "--kinds", "all", "--next-weight", "3", "--next-first", "1")
    assert 0 < n_next < n_all and _rows(curriculum) == n_all + 2 * n_next
    assert "next x3, next-only for 1 steps" in curriculum.stdout


def test_collapse_probe_on_a_real_dataset():
    r = _run("--data", str(REPO / "p5x" / "sample_data" / "gift_cards"), "--steps", "1", "--kinds", "next")
    assert _rows(r) > 0 and "458 validation users" in r.stdout and "step 1:" in r.stdout


def test_collapse_probe_rejects_bad_flags():
    r = _run("--steps", "0")
    assert r.returncode == 2 and "--steps" in r.stderr
    assert _run("--next-weight", "0").returncode == 2 and _run("--next-first", "-1").returncode == 2


def test_continuation_rows_last_prompt_and_cooc_init(tmp_path):
    """--continuation K: one row per cut of every training sequence, the next K ids as its target;
    --prompt last keeps only the last id; --item-init cooc and --embed-std run."""
    import re

    from p5x.schema import load_dataset
    from p5x.split import time_split
    from p5x.toydata import make_toy_dataset

    make_toy_dataset(tmp_path / "toy", n_users=30, n_items=24, seed=0)
    cuts = sum(len(xs) - 1 for xs in time_split(load_dataset(tmp_path / "toy")).train.values())
    r = _run("--users", "30", "--items", "24", "--steps", "2", "--every", "2", "--prompt", "last",
             "--continuation", "2", "--item-init", "cooc", "--embed-std", "0.1")
    assert _rows(r) == cuts
    src, tgt = re.search(r"e\.g\. '([^']*)' -> '([^']*)'", r.stdout).groups()
    assert re.fullmatch(r"<i0_\d+>", src) and 1 <= len(tgt.split()) <= 2
    rev = _run("--users", "30", "--items", "24", "--steps", "1", "--prompt", "ids-reversed", "--continuation", "1")
    fwd = _run("--users", "30", "--items", "24", "--steps", "1", "--prompt", "ids", "--continuation", "1")
    first = [re.search(r"e\.g\. '([^']*)'", x.stdout).group(1).split() for x in (rev, fwd)]
    assert first[0] == first[1][::-1] and len(first[0]) >= 2
    bad = _run("--continuation", "2")  # the rendered text has no continuation form
    assert bad.returncode == 2 and "--continuation" in bad.stderr
