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
    assert "(ids, kinds next, whole-word on)" in head and "'<i0_" in head and "validation users" in head


def test_collapse_probe_rejects_bad_flags():
    r = _run("--steps", "0")
    assert r.returncode == 2 and "--steps" in r.stderr
