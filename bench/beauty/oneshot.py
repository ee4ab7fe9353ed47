"""The whole Beauty run in one command that ends inside a time budget (a short GPU lease).

    python bench/beauty/oneshot.py --budget 540 --out $OUT/oneshot

The budget counts from the command's start: from $P5X_COMMAND_START where set (device_setup.sh
exports it first thing, so its wheel installs and CUDA start are inside the budget), else from this
driver's own start.

A GPU lease here is 15 minutes of device time, machine start included, and one command may run 10
minutes; the staged recipe (run_gpu.sh: prepare, train, train, evaluate, each a call) does not fit
that. This driver runs the same stages in one process tree and sizes training to what is left:

1. convert Beauty (data_prep p5) unless --data names a converted folder;
2. prepare: render the epochs, train SentencePiece, pre-tokenize (train.py --prepare-only);
3. calibrate: train --calibrate-train seconds (train.py --time-limit; a checkpoint), then time the
   sequential evaluation on --calibrate-users test users with that checkpoint: only its speed is
   read, its scores are thrown away;
4. plan: the evaluation needs (seconds per user x users x prompts + load time) x 1.15; training gets
   the rest of the budget less the measured start-up cost and --margin; the step count that fits at
   the calibrated rate becomes --max-steps, so the LR schedule ends where training ends (the
   time limit stays as a backstop). Both rates are steady ones: a GPU's one-time start-up (the
   first training batches, a throwaway scoring batch) and the final save count as fixed cost, not
   as per-step or per-user time that the full run would pay again and again. If even --min-train seconds of training would leave too little
   time to score every user, the evaluation is cut to the first N users (sorted ids) that fit, and
   the summary says so;
5. train (resumes the calibration checkpoint), then evaluate each prompt (seen, unseen) in its own
   process, so one that runs out of budget leaves the others' results; then the prompts named in
   "oneshot.exclude_history_templates" again with each user's history left out of the ranking
   (`p5x.evaluate --exclude-history`: a second protocol, reported apart, planned in like a prompt).

Everything small comes back in --out (at most 8 files: summary.json/.md, one metrics_<template>.json
per evaluated prompt and protocol, throughput.json, log_history.json, oneshot.log); the rest stays in --run.
Config: the "train" and "evaluate" sections of --config, with "oneshot.train" / "oneshot.evaluate"
over them and the budget knobs in "oneshot" (command-line flags win).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]
from flags import to_flags  # noqa: E402

from p5x.metrics import format_table, git_commit  # noqa: E402  (numpy only: no torch in the driver)


DIVERSITY_USERS = 500  # users the post-evaluation diversity check ranks (its time is planned in)
MAX_METRICS_FILES = 3  # with summary.json/.md, throughput, log_history and the log: the 8 files that come back


class Budget:
    """The command's seconds: `spent` of them went before this driver started (device_setup.sh)."""

    def __init__(self, seconds: float, spent: float = 0.0):
        self.t0 = time.monotonic()
        self.seconds, self.spent = seconds, spent

    def elapsed(self) -> float:
        return self.spent + time.monotonic() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


class Runner:
    """Runs stage commands with their output appended to one log; a failing stage ends the run."""

    def __init__(self, log: Path, env: dict, after=None):
        self.log, self.env, self.stages, self.after = log, env, {}, after

    def __call__(self, name: str, cmd: list[str], timeout: float | None = None) -> float:
        t = time.monotonic()
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"\n$ {shlex.join(cmd)}\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=self.env,
                                    timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        sec = round(time.monotonic() - t, 2)
        self.stages[name] = sec
        if self.after is not None:
            self.after()  # the summary so far, in case the machine's own limit ends the command
        if rc != 0:
            raise StageFailed(f"stage {name} {'ran out of time' if rc == 'timeout' else f'exited {rc}'} "
                              f"after {sec:.0f}s; see {self.log}")
        print(f"oneshot: {name} {sec:.1f}s", flush=True)
        return sec


class StageFailed(RuntimeError):
    pass


COMMAND_START_ENV = "P5X_COMMAND_START"  # epoch seconds; bench/beauty/device_setup.sh exports it first thing


def command_seconds_so_far(start: str | None, now: float | None = None) -> float:
    """Seconds since the command began, by $P5X_COMMAND_START (0 when unset or empty).

    The device runs one command under a hard limit, and device_setup.sh (wheel installs, CUDA start)
    runs before this driver: counting the budget from the driver's own start would leave that time
    out of it."""
    if not start:
        return 0.0
    try:
        t = float(start)
    except ValueError:
        raise ValueError(f"${COMMAND_START_ENV}: expected the command's start in epoch seconds, got {start!r}") from None
    spent = (time.time() if now is None else now) - t
    if spent < 0:
        raise ValueError(f"${COMMAND_START_ENV}: {start} lies {-spent:.0f} s in the future")
    return spent


def load_sections(config: Path, ablation: str | None = None) -> tuple[dict, dict, dict]:
    """(train flags, evaluate flags, oneshot knobs); an ablation's one flag goes over the train flags.

    "oneshot.ablations" may add flags to an ablation for the one-command run only, whose epochs differ
    from the staged recipe's (e.g. p5_mixture renders one epoch here instead of two). An ablation that
    changes none of the main run's flags (next_only over a next-only main run) is refused.
    """
    cfg = json.loads(config.read_text(encoding="utf-8"))
    one = cfg.get("oneshot", {})
    abl = {}
    if ablation:
        known = cfg.get("ablations", {})
        if ablation not in known:
            raise KeyError(f"ablation {ablation!r} (known: {', '.join(known) or 'none'})")
        abl = {**known[ablation], **one.get("ablations", {}).get(ablation, {})}
    main = {**cfg["train"], **one.get("train", {})}
    train = {**main, **abl}
    if ablation and train == main:  # a lease spent on the main run again, under another name
        raise KeyError(f"ablation {ablation!r} leaves this run's flags as they are (it equals the main run here)")
    evaluate = {**cfg["evaluate"], **one.get("evaluate", {})}
    if train.get("index") != "atomic":  # the content prior ranks one-token ids only (p5x.evaluate refuses others)
        evaluate.pop("content_prior", None)
    for k in ("time_limit", "max_steps", "resume", "prepare_only"):  # this driver sets them
        train.pop(k, None)
    evaluate.pop("max_users", None)
    return train, evaluate, one


def plan(left: float, cal: dict, users: int, prompts: int, margin: float, min_train: float,
         max_steps: int | None = None, diversity_users: int = 0) -> dict:
    """Split the seconds left between training and evaluation from the calibration timings.

    max_steps: a cap on the total optimizer steps (oneshot.max_passes over the prepared rows);
    None lets training fill its time, passing over the prepared rows again if it gets through them.
    diversity_users: also reserve one more scoring process over that many users (the diversity check).
    """
    per_user = max(cal["eval_model_s"] / max(cal["eval_users"], 1), 1e-6)
    eval_fixed = max(0.0, cal["eval_wall_s"] - cal["eval_model_s"])
    diversity = (eval_fixed + per_user * min(diversity_users, users)) if diversity_users else 0.0
    # one evaluation process per prompt, then the diversity check
    eval_need = 1.15 * (prompts * (eval_fixed + per_user * users) + diversity)
    # start-up, cache load, checkpoint save; not the item-row fit, which a resumed stage skips
    train_fixed = max(0.0, cal["train_wall_s"] - cal["train_s"] - cal.get("item_init_s", 0.0))
    train_s = left - eval_need - train_fixed - margin
    eval_users = users
    if train_s < min_train and diversity_users:  # short of time: the optional check goes first
        return plan(left, cal, users, prompts, margin, min_train, max_steps, 0)
    if train_s < min_train:
        train_s = max(0.0, min(min_train, left - train_fixed - margin - 1.15 * prompts * eval_fixed))
        room = left - train_s - train_fixed - margin  # (no diversity check on this path)
        eval_users = max(0, min(users, int((room / (1.15 * prompts) - eval_fixed) / per_user)))
    steps = int(cal["steps_per_s"] * train_s)
    if max_steps is not None:
        steps = max(0, min(steps, max_steps - cal["steps"]))
    return {"train_s": round(train_s, 1), "extra_steps": steps, "eval_users": eval_users,
            "diversity_s": round(diversity, 1),
            "eval_need_s": round(eval_need, 1), "per_user_s": round(per_user, 5), "train_fixed_s": round(train_fixed, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/beauty/oneshot.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--config", type=Path, default=HERE / "config.json", help="recipe config")
    ap.add_argument("--budget", type=float, help="seconds for the whole command, counted from $P5X_COMMAND_START "
                    "(epoch seconds; device_setup.sh exports it as the command begins) when set, else from this "
                    "driver's start (default: config oneshot.budget_s)")
    ap.add_argument("--run", type=Path, default=Path("runs/beauty-oneshot"), help="large files (data, cache, model)")
    ap.add_argument("--out", type=Path, default=Path("runs/beauty-oneshot/out"), help="small results")
    ap.add_argument("--beauty", type=Path, default=Path(os.environ.get("BEAUTY", REPO.parent / "shared/data/beauty")),
                    help="raw Beauty folder (P5's files; env BEAUTY)")
    ap.add_argument("--data", type=Path, help="an already converted dataset (skips data_prep)")
    ap.add_argument("--ablation", help="one entry of the config's 'ablations' (e.g. no_whole_word) over the train flags; "
                    "use its own --run and --out")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the stages")
    args = ap.parse_args(argv)

    try:
        train, evaluate, one = load_sections(args.config, args.ablation)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {args.config}: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    cal_train = float(one.get("calibrate_train_s", 30))
    cal_users = int(one.get("calibrate_users", 512))
    margin, min_train = float(one.get("margin_s", 20)), float(one.get("min_train_s", 60))
    try:
        spent = command_seconds_so_far(os.environ.get(COMMAND_START_ENV))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    budget = Budget(args.budget or float(one.get("budget_s", 540)), spent)
    if budget.left() < min_train:
        print(f"error: ${COMMAND_START_ENV} says this command started {spent:.0f} s ago, which leaves "
              f"{budget.left():.0f} s of the {budget.seconds:.0f} s budget (unset it to count from this driver's "
              f"start)", file=sys.stderr)
        return 2
    max_passes = one.get("max_passes")  # absent/null: training fills its time, the rows repeat if need be
    if max_passes is not None and not (isinstance(max_passes, (int, float)) and max_passes > 0):
        print(f"error: {args.config}: oneshot.max_passes must be a positive number or null, got {max_passes!r}",
              file=sys.stderr)
        return 2
    tids = [t for t in str(evaluate.get("template_ids", "")).split(",") if t] or [None]
    # each prompt under the anchors' protocol (every item ranked), then these again with the user's
    # history left out of the ranking (p5x.evaluate --exclude-history)
    excl = [t for t in str(one.get("exclude_history_templates", "")).split(",") if t]
    if any(t not in tids for t in excl):
        print(f"error: {args.config}: oneshot.exclude_history_templates {excl} must be among the evaluated "
              f"template_ids {tids}", file=sys.stderr)
        return 2
    passes = [(t, False) for t in tids] + [(t, True) for t in excl]
    if len(passes) > MAX_METRICS_FILES:
        print(f"error: {args.config}: {len(passes)} evaluation passes would write {len(passes)} metrics files; "
              f"at most {MAX_METRICS_FILES} come back from the GPU machine with the other files", file=sys.stderr)
        return 2
    prompts = len(passes)

    args.run.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "oneshot.log"
    log.write_text("")
    # (the device machine has no network: a stray hub lookup fails at once instead of hanging)
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    summary: dict = {}

    def save(status: str = "running") -> None:
        summary["status"], summary["elapsed_s"] = status, round(budget.elapsed(), 1)
        tmp = args.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(args.out / "summary.json")

    run = Runner(log, env, after=save)
    py = args.python
    data = args.data or (args.run / "data")
    model = args.run / "model"
    summary.update({"budget_s": budget.seconds, "before_driver_s": round(budget.spent, 1), "config": str(args.config), "ablation": args.ablation,
                    "train_flags": train,
                    "evaluate_flags": evaluate, "stages_s": run.stages})
    summary["commit"] = git_commit() or "unknown"
    tflags = to_flags(train) + ["--data", str(data), "--output", str(model)]
    status = "failed"
    try:
        if args.data is None and not (data / "manifest.json").is_file():
            run("convert", [py, "-m", "data_prep", "p5", "--input", str(args.beauty), "--output", str(data),
                            "--name", "beauty"])
        run("prepare", [py, "train.py", *tflags, "--prepare-only"])
        # calibration: a short training stage (checkpointed), then timed scoring of a few users
        run("calibrate_train", [py, "train.py", *tflags, "--pretokenize", "--resume", "--time-limit", str(cal_train)])
        tp = json.loads((model / "throughput.json").read_text())
        extra = ["--checkpoint", str(model), "--no-baselines", "--no-progress"]
        cal_dir = args.run / "calibrate_eval"
        # the same protocol on one seen prompt (its speed is what is read; the scores are discarded)
        cal_flags = to_flags({**evaluate, "template_ids": tids[0]}) + extra
        wall = run("calibrate_eval", [py, "-m", "p5x.evaluate", *cal_flags, "--max-users", str(cal_users),
                                      "--out", str(cal_dir)])
        meta = json.loads((cal_dir / "metrics.json").read_text())["meta"]
        n_users = _eval_user_count(py, data, env)
        # the steady rate leaves the first batches' start-up and the final save out; the stage's
        # seconds beyond its steps at that rate count as fixed cost, paid again by the train stage
        overall = tp["global_step"] / max(tp["seconds"], 1e-9)
        rate = tp.get("steady_steps_per_s") or overall
        cal = {"train_s": tp["global_step"] / rate, "train_wall_s": run.stages["calibrate_train"],
               "item_init_s": tp.get("item_init_seconds", 0.0),
               "steps_per_s": rate, "steps": tp["global_step"], "overall_steps_per_s": round(overall, 4),
               "eval_warmup_s": meta.get("model_warmup_seconds"),
               "eval_users": min(cal_users, n_users), "eval_model_s": meta["model_eval_seconds"], "eval_wall_s": wall}
        steps_cap = None
        if max_passes:  # the steps of max_passes passes over the prepared rows
            steps_cap = int(max_passes * tp["rows"] // (tp["batch_size"] * tp.get("grad_accum", 1)))
        p = plan(budget.left(), cal, n_users, prompts, margin, min_train, steps_cap, DIVERSITY_USERS)
        summary.update(calibration=cal, plan=p, test_users=n_users)
        print(f"oneshot: plan {json.dumps(p)}", flush=True)
        if p["extra_steps"] > 0:
            run("train", [py, "train.py", *tflags, "--pretokenize", "--resume",
                          "--max-steps", str(cal["steps"] + p["extra_steps"]),
                          # half the margin as slack: the stage's start-up falls inside its time limit
                          "--time-limit", str(round(p["train_s"] + margin / 2, 1))])
        tp = json.loads((model / "throughput.json").read_text())
        summary["train"] = {"global_step": tp["global_step"], "max_steps": tp["max_steps"],
                            "rows": tp.get("rows"), "passes": tp.get("passes"),
                            "samples_per_s": tp.get("samples_per_s"), "tokens_per_s": tp.get("tokens_per_s"),
                            "device": tp.get("device"), "bf16": tp.get("bf16")}
        if p["eval_users"] < 1:
            raise StageFailed("no time left to evaluate a single user")
        cap = [] if p["eval_users"] >= n_users else ["--max-users", str(p["eval_users"])]
        summary["eval_users"], summary["results"] = p["eval_users"], []
        # one process per prompt: a prompt cut off by the budget does not take the others with it
        for tid, without_history in passes:
            tag = (tid or "all") + ("_history_excluded" if without_history else "")
            eval_dir = args.run / f"eval_{tag}"
            try:
                run(f"evaluate_{tag}", [py, "-m", "p5x.evaluate", *to_flags({**evaluate, "template_ids": tid}),
                                        *extra, *cap, *(["--exclude-history"] if without_history else []),
                                        "--out", str(eval_dir)], timeout=max(1.0, budget.left()))
            except StageFailed as e:
                if not without_history:
                    raise
                # the second protocol is extra: the anchors' results already stand
                summary["history_excluded_error"] = str(e)
                continue
            res = json.loads((eval_dir / "metrics.json").read_text())
            summary["results"] += res["rows"]
            shutil.copy(eval_dir / "metrics.json", args.out / f"metrics_{tag}.json")
        status = "done"
        # optional, its time planned in: does the ranking depend on the history at all? (a model
        # collapsed onto the item prior scores near popularity; bench/prediction_diversity.py)
        if budget.left() > p["diversity_s"] + 5:
            div = args.run / "diversity.json"
            try:
                run("diversity", [py, "bench/prediction_diversity.py", "--checkpoint", str(model), "--data", str(data),
                                  "--users", str(DIVERSITY_USERS), "--template", tids[0] or "sequential-1",
                                  "--beams", str(evaluate.get("beams", 20)),
                                  "--batch-size", str(evaluate.get("batch_size", 16)),
                                  "--device", str(evaluate.get("device", "auto")), "--json", str(div)],
                    timeout=budget.left() - 5)
                summary["diversity"] = json.loads(div.read_text())
            except (StageFailed, OSError, ValueError) as e:
                summary["diversity_error"] = str(e)  # a diagnostic: the run's results stand without it
    except (StageFailed, OSError, ValueError, KeyError) as e:
        summary["error"] = str(e)
        print(f"oneshot: {e}", file=sys.stderr)
    finally:
        for f in ("throughput.json",):
            if (model / f).is_file():
                shutil.copy(model / f, args.out / f)
        if (model / "trainer_state.json").is_file():
            hist = json.loads((model / "trainer_state.json").read_text())["log_history"]
            (args.out / "log_history.json").write_text(json.dumps(hist))
        save(status)
        (args.out / "summary.md").write_text(summary_md(summary))
    print(summary_md(summary))
    return 0 if status == "done" else 1


def _eval_user_count(py: str, data: Path, env: dict) -> int:
    """Test users of the split (users with at least three interactions), counted by p5x itself."""
    code = ("import sys; from p5x.schema import load_dataset; from p5x.split import time_split; "
            "print(len(time_split(load_dataset(sys.argv[1])).eval_users('test')))")
    out = subprocess.run([py, "-c", code, str(data)], capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise StageFailed(f"counting the test users of {data} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return int(out.stdout.strip())


def summary_md(s: dict) -> str:
    lines = [f"# Beauty one-shot run ({s.get('status')})", "",
             f"commit {s.get('commit')}, budget {s.get('budget_s'):.0f} s, elapsed {s.get('elapsed_s')} s "
             f"({s.get('before_driver_s', 0)} s of it before this driver started)", ""]
    if s.get("error"):
        lines += [f"error: {s['error']}", ""]
    lines += ["| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in s.get("stages_s", {}).items()]
    if "plan" in s:
        lines += ["", f"plan: {json.dumps(s['plan'])}", f"calibration: {json.dumps(s['calibration'])}"]
    if "train" in s:
        lines += ["", f"training: {json.dumps(s['train'])}"]
    if "diversity" in s:
        lines += ["", f"prediction diversity: {json.dumps(s['diversity'])}"]
    if s.get("results"):
        users = s.get("eval_users")
        lines += ["", f"test users scored: {users} of {s.get('test_users')} (ms per user and prompt: "
                  + ", ".join(f"{','.join(r['template_ids'])}{' history excluded' if 'excluded' in r['protocol'] else ''}"
                              f" {r['ms_per_row']}" for r in s["results"] if ", users with " not in r["protocol"])
                  + ")", "",
                  format_table(s["results"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
