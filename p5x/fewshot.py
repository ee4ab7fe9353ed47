"""Few-shot preference tuning (TALLRec) and its AUC curve on held-out users.

    python -m p5x.fewshot --data DIR --model smollm2-135m --shots 16,64,256 --seeds 0,1,2 \
        --peft lora,none --out DIR

Protocol. The split is p5x.split.time_split (last interaction = test). A fixed, seeded set of
HELD-OUT users (--eval-users, drawn by --holdout-seed among users whose test interaction has a
rating) is scored on its test interaction with one preference template: liked = rating > 3, the
score is P("yes") / (P("yes") + P("no")) at the first answer step, the answer tokens looked up from
the tokenizer at run time (p5x.inference.yes_probability), and the metric is AUC.

Training examples (`fewshot_rows`, also behind `train.py --shots N`): N preference prompts drawn
with the run's seed from the TRAINING part of the users who are NOT held out. One example is a user
and a cut of their training sequence: the target is the interaction after the cut, the prompt
lists the liked and disliked titles before it (p5x.tasks' preference preprocessor). Held-out users
contribute nothing to training, and a pair (user, item) that sits in any user's validation or test
part is never a training target, so no evaluated (user, item) reaches training. The draw is
BALANCED: N // 2 liked and N - N // 2 disliked targets (topped up from the other class when one
runs short), because at 16 shots a natural draw (about 55% liked on MovieLens) can leave a class
with a handful of rows; AUC does not depend on the prior the model learns. Each example gets one
seen template, drawn with the same seed; every epoch repeats the same N rows, reshuffled.

Step selection (TALLRec's early stopping). --valid-users other users (never the held-out ones),
drawn with the holdout seed among those whose VALIDATION interaction is rated, are scored on that
interaction every --eval-every optimizer steps; each run keeps the weights of its best validation
step (step 0, the untuned model, is scored for the record but never kept) and that is the adapter
saved, reloaded and scored on the held-out test rows. The test rows never choose anything.

Rows of the curve: the untuned model (zero-shot, same prompts and answer tokens), LoRA and full
fine-tuning at each shot count and seed, and three baselines on the same held-out rows: popularity
(the target's number of training interactions), like-rate (the share of liked items among those
the prompt lists: no learning, and the bar a model reading the prompt has to clear) and
sasrec-sigmoid (p5x.baselines: SASRec with a P(like) head trained on every user's training part;
the held-out users' test interactions stay unseen). Output: metrics.json (+ metrics.md, the per-run and mean rows), curve.md and curve.png.
Runs already recorded in OUT/runs.json are not repeated, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, P5XError

EVAL_TEMPLATE = "preference-1"


# ----------------------------------------------------------------------------------------------
# held-out users and few-shot training rows


def _rated_draw(part: dict, n: int, rng_seed, flag: str, exclude=()) -> list[str]:
    """n users (sorted) drawn with np.random.default_rng(rng_seed) among those whose interaction in
    `part` (a split's valid or test dict) is rated, none of `exclude`; all if n is 0 or too large."""
    if n < 0:
        raise ConfigError(f"{flag}: must be >= 0, got {n}")
    skip = set(exclude)
    users = sorted(u for u, x in part.items() if x.rating is not None and u not in skip)
    if n == 0 or n >= len(users):
        return users
    pick = np.random.default_rng(rng_seed).permutation(len(users))[:n]
    return sorted(users[i] for i in pick)


def holdout_users(split, n: int, seed: int = 0) -> list[str]:
    """n users (sorted) drawn with `seed` among those whose test interaction is rated; all if fewer."""
    return _rated_draw(split.test, n, seed, "--eval-users")


def validation_users(split, n: int, seed: int, exclude=()) -> list[str]:
    """n users (sorted) drawn with `seed` among those whose VALIDATION interaction is rated, none of
    `exclude` (the held-out test users); all if fewer, none for n = 0. Their validation rows pick
    the training step."""
    return _rated_draw(split.valid, n, [seed, 2], "--valid-users", exclude) if n else []


def shot_pool(ctx, exclude_users=()) -> list[tuple[str, int, bool]]:
    """Every candidate example (user, cut j, liked) from training parts of non-excluded users.

    The target is split.train[user][j] (j >= 1, so a history exists); it must carry a rating, and a
    (user, item) pair that also occurs in a validation or test part (duplicate records) is skipped.
    """
    split, skip = ctx.split, set(exclude_users)
    held = {(u, x.item_id) for part in (split.valid, split.test) for u, x in part.items()}
    pool = []
    for user in sorted(split.train):
        if user in skip:
            continue
        xs = split.train[user]
        for j in range(1, len(xs)):
            x = xs[j]
            if x.rating is not None and (user, x.item_id) not in held:
                pool.append((user, j, bool(x.rating > 3)))
    return pool


def draw_shots(pool, n: int, seed: int, balanced: bool = True) -> list[tuple[str, int, bool]]:
    """n examples of `pool` drawn with `seed` (half liked, half not when balanced)."""
    if n < 1:
        raise ConfigError(f"--shots: must be at least 1, got {n}")
    if n > len(pool):
        raise ConfigError(f"--shots: {n} examples asked, only {len(pool)} training interactions qualify")
    rng = np.random.default_rng(seed)
    if not balanced:
        return [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False))]
    pos = [k for k, p in enumerate(pool) if p[2]]
    neg = [k for k, p in enumerate(pool) if not p[2]]
    n_pos = min(len(pos), max(n // 2, n - len(neg)))
    chosen = list(rng.choice(pos, n_pos, replace=False)) if n_pos else []
    chosen += list(rng.choice(neg, n - n_pos, replace=False)) if n > n_pos else []
    return [pool[i] for i in sorted(chosen)]


def fewshot_rows(ctx, n: int, seed: int, exclude_users=(), balanced: bool = True):
    """A datasets.Dataset of n preference training rows (p5x.tasks columns), drawn with `seed`."""
    import datasets

    from .tasks import COLUMNS, _preference_sample, applicable

    ok, why = applicable(ctx, "preference")
    if not ok:
        raise ConfigError(why)
    templates = ctx.templates["preference"].seen()
    rng = np.random.default_rng([seed, 1])  # template draws, apart from the example draw
    rows = {c: [] for c in COLUMNS}
    for user, j, _ in draw_shots(shot_pool(ctx, exclude_users), n, seed, balanced):
        xs = ctx.split.train[user]
        (s,) = _preference_sample(ctx, user, xs[:j], xs[j])
        t = templates[int(rng.integers(len(templates)))]
        inp, tgt = t.render(s.fields)
        for col, v in zip(COLUMNS, (inp, tgt, "preference", t.id, t.kind, user, s.item_id, [], s.label)):
            rows[col].append(v)
    return datasets.Dataset.from_dict(rows)


def fewshot_task_rows(ds, cfg):
    """make_rows hook of p5x.training.train for --shots: (index, user index, rows of every epoch)."""
    import datasets

    from .tasks import make_context

    if cfg.families() != ["preference"]:
        raise ConfigError("--shots: few-shot sampling is defined for --tasks preference only")
    ctx = make_context(ds, index_method=cfg.index, seed=cfg.seed)
    held = holdout_users(ctx.split, cfg.holdout_users, cfg.holdout_seed) if cfg.holdout_users else []
    rows = fewshot_rows(ctx, cfg.shots, cfg.seed, exclude_users=held)
    epochs = [rows.shuffle(seed=cfg.seed + e) for e in range(cfg.epochs)]
    return ctx.index, ctx.user_index, datasets.concatenate_datasets(epochs).flatten_indices()


# ----------------------------------------------------------------------------------------------
# scoring


def eval_rows(ctx, users, template: str = EVAL_TEMPLATE, part: str = "test"):
    from .tasks import render

    rows = render(ctx, ["preference"], part, templates=[template], users=users)
    if not len(rows):
        raise ConfigError(f"no preference {part} rows for the {'held-out' if part == 'test' else 'validation'} users")
    return rows


def untuned_checkpoint(model: str, index, user_index, whole_word: bool = False, max_source_len: int = 512):
    """The backbone as shipped (plus id-piece tokens), wrapped like a loaded checkpoint: the zero-shot row."""
    import torch

    from .checkpoint import Checkpoint
    from .features import Featurizer
    from .modeling import P5XModel, build_backbone, load_pretrained_tokenizer, resolve_backbone
    from .tokenization import add_pieces

    spec = resolve_backbone(model)
    if spec.pretrained is None:
        raise ConfigError(f"--model {model}: zero-shot needs a pretrained backbone (it has no weights)")
    tok = load_pretrained_tokenizer(spec)
    add_pieces(tok, list(index.pieces()) + list(user_index.pieces()))
    torch.manual_seed(0)
    net = P5XModel(build_backbone(spec, tok), whole_word=whole_word, word_init_std=0.0).eval()
    fz = Featurizer(tok, spec.decoder_only, whole_word, max_source_len, 8)
    return Checkpoint(net, tok, fz, index, user_index, {"backbone": model})


def auc_of(ckpt, rows, batch_size: int = 16, bf16: bool = False) -> float:
    """AUC of P(yes) on preference rows; bf16: score under bf16 autocast (weights stay as they are)."""
    import torch

    from . import metrics as M
    from .inference import yes_probability

    if set(rows["targets"]) - {"yes", "no"}:
        raise ConfigError(f"preference targets must be yes/no, got {sorted(set(rows['targets']))}")
    dev = next(ckpt.model.parameters()).device.type
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
        p = yes_probability(ckpt, rows["inputs"], batch_size=batch_size, progress=False)
    return float(M.auc(np.asarray(rows["label"], dtype=float), p))


def validation_callback(rows, every: int, max_steps: int, batch_size: int = 16, bf16: bool = False, log=None):
    """A factory featurizer -> TrainerCallback for p5x.training.train: every `every` optimizer steps
    (and at the last) it scores the validation rows, keeps a copy of the trainable weights of the
    best step (AUC; the earlier step on a tie) and puts them back when training ends, so the
    checkpoint train() saves is the selected one (TALLRec's early stopping by validation AUC).
    Step 0, the untuned model, is scored for the record but never selected. The record
    (`.history`, `.best_step`, `.best_auc`) stays on the factory."""
    from types import SimpleNamespace

    import torch
    from transformers import TrainerCallback

    if every < 1:
        raise ConfigError(f"--eval-every: must be at least 1, got {every}")
    state = SimpleNamespace(history=[], best_step=None, best_auc=None, weights=None)

    def make(featurizer):
        class SelectByValidation(TrainerCallback):
            def _score(self, model, step):
                auc = auc_of(SimpleNamespace(model=model, featurizer=featurizer), rows, batch_size, bf16)
                model.train()
                state.history.append({"step": step, "AUC": auc})
                if log:
                    log(f"  step {step}: validation AUC {auc:.4f}")
                return auc

            def on_train_begin(self, args, st, control, model=None, **kw):
                if st.global_step == 0:
                    self._score(model, 0)

            def on_step_end(self, args, st, control, model=None, **kw):
                step = st.global_step
                if step % every and step != max_steps:
                    return
                auc = self._score(model, step)
                if state.best_auc is None or auc > state.best_auc:
                    state.best_step, state.best_auc = step, auc
                    state.weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                                     if p.requires_grad}

            def on_train_end(self, args, st, control, model=None, **kw):
                best = state.weights
                if best is None:
                    return
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if n in best:
                            p.copy_(best[n].to(p.device))
                state.weights = None

        return SelectByValidation()

    make.state = state
    return make


def history_like_rate(history) -> float:
    """Share of liked (rating > 3) among the rated items the preference prompt shows (the last
    PREFERENCE_HISTORY of the history); 0.5 when none is rated. No learning at all."""
    from .tasks import preference_window

    rated = [x.rating > 3 for x in preference_window(history)]
    return float(np.mean(rated)) if rated else 0.5


def baseline_aucs(ctx, users, epochs: int = 50, seed: int = 0, device: str = "cpu") -> dict[str, float]:
    """popularity, history like-rate and sasrec-sigmoid AUC on the held-out users' test interactions."""
    from . import metrics as M
    from .baselines import popularity_counts, score_sasrec, train_sasrec

    split, items = ctx.split, list(ctx.ds.items)
    recs = [split.test[u] for u in users]
    labels = np.array([float(x.rating > 3) for x in recs])
    counts = popularity_counts(split, items)
    pos = {iid: k for k, iid in enumerate(items)}
    out = {"popularity": float(M.auc(labels, np.array([counts[pos[x.item_id]] for x in recs])))}
    rate = [history_like_rate(split.history(u, "test")) for u in users]
    out["like-rate"] = float(M.auc(labels, np.array(rate)))
    sas = train_sasrec(split, items, "sigmoid", epochs=epochs, seed=seed, device=device, progress=False)
    hist = [split.history_ids(u, "test") for u in users]
    p = score_sasrec(sas, hist, [[x.item_id] for x in recs])[:, 0]
    out["sasrec-sigmoid"] = float(M.auc(labels, p))
    return out


# ----------------------------------------------------------------------------------------------
# the sweep


@dataclass
class FewShotConfig:
    """Options of `python -m p5x.fewshot` (see --help)."""

    data: str
    out: str
    model: str = "smollm2-135m"
    shots: list = field(default_factory=lambda: [16, 64, 256])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    peft: list = field(default_factory=lambda: ["lora", "none"])
    full_shots: list = field(default_factory=lambda: [64])
    full_seeds: list | None = None   # seeds of the full fine-tuning runs (None: the same as seeds)
    eval_users: int = 300
    holdout_seed: int = 0
    template: str = EVAL_TEMPLATE
    steps: int = 128       # optimizer steps per run, whatever the shot count (the shots repeat as epochs)
    batch_size: int = 8
    lr_lora: float = 1e-3
    lr_full: float = 5e-5
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    max_source_len: int = 512
    sasrec_epochs: int = 50
    eval_batch: int = 16
    valid_users: int = 200  # validation users (their validation interaction) that pick the step; 0: last step
    eval_every: int = 32    # optimizer steps between validation scorings
    bf16: str = "auto"      # auto: on CUDA only; on: also on CPU (autocast); off
    keep_checkpoints: bool = False
    zero_shot: bool = True
    device: str = "auto"   # auto: cuda when present, else cpu (training, scoring and SASRec alike)

    def torch_device(self) -> str:
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device

    def use_bf16(self) -> bool:
        return self.torch_device() == "cuda" if self.bf16 == "auto" else self.bf16 == "on"


def _train_one(cfg: FewShotConfig, peft: str, shots: int, seed: int, out: Path, callbacks=()) -> Path:
    from .training import TrainConfig, train

    epochs = -(-cfg.steps * cfg.batch_size // shots)  # enough passes over the shots for cfg.steps
    tc = TrainConfig(data=cfg.data, tasks="preference", model=cfg.model, output=str(out), epochs=epochs,
                     max_steps=cfg.steps, warmup_steps=cfg.steps // 10, batch_size=cfg.batch_size,
                     lr=cfg.lr_lora if peft == "lora" else cfg.lr_full, seed=seed,
                     whole_word_embeddings="off", peft=peft, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                     lora_targets=cfg.lora_targets if peft == "lora" else "", max_source_len=cfg.max_source_len,
                     max_target_len=4, shots=shots, holdout_users=cfg.eval_users, holdout_seed=cfg.holdout_seed,
                     save_steps=10**9, logging_steps=1, use_cpu=cfg.torch_device() == "cpu",
                     bf16="on" if cfg.use_bf16() else "off")
    return train(tc, callbacks=callbacks)


PROTOCOL_FIELDS = ("model", "template", "eval_users", "holdout_seed", "steps", "batch_size", "lr_lora", "lr_full",
                   "lora_rank", "lora_alpha", "lora_targets", "max_source_len", "sasrec_epochs", "valid_users",
                   "eval_every", "bf16")
BASELINES = ("popularity", "like-rate", "sasrec-sigmoid")


def protocol_of(cfg: FewShotConfig, ds) -> dict:
    """What a run's AUC depends on besides (method, shots, seed): runs recorded under another
    protocol are never mixed into a sweep (OUT/protocol.json)."""
    from .training import CACHE_FORMAT, templates_hash

    return {"data_hash": ds.data_hash, "templates_hash": templates_hash(), "encoding_format": CACHE_FORMAT,
            **{k: getattr(cfg, k) for k in PROTOCOL_FIELDS}}


def check_protocol(out: Path, protocol: dict) -> None:
    """Refuse an OUT whose recorded runs came from another protocol; record it for a fresh OUT."""
    path, runs = out / "protocol.json", out / "runs.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in sorted(set(old) | set(protocol)) if old.get(k) != protocol.get(k)]
        if diff:
            k = diff[0]
            raise ConfigError(f"{path}: field '{k}': these runs used {old.get(k)!r}, this sweep {protocol.get(k)!r}; "
                              f"give a new --out (or the same options) rather than mix them")
    elif runs.is_file() and _load_runs(runs):
        raise ConfigError(f"{runs}: runs recorded without a protocol.json (an older p5x); give a new --out")
    else:
        _save_json(path, protocol)


def _load_runs(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def _save_json(path: Path, obj) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def run_sweep(cfg: FewShotConfig, log=print) -> tuple[list[dict], dict]:
    """Every run of the curve (resuming from OUT/runs.json); returns (per-run records, meta)."""
    from .checkpoint import load_checkpoint
    from .schema import load_dataset
    from .tasks import make_context
    from .training import warn_if_emulated_bf16

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.data)
    ctx = make_context(ds, seed=0)
    users = holdout_users(ctx.split, cfg.eval_users, cfg.holdout_seed)
    rows = eval_rows(ctx, users, cfg.template)
    log(f"{len(rows)} held-out rows, {sum(rows['label']):.0f} liked")
    vusers = validation_users(ctx.split, cfg.valid_users, cfg.holdout_seed, exclude=users)
    vrows = eval_rows(ctx, vusers, cfg.template, part="valid") if vusers else None
    if vrows is not None:
        log(f"{len(vrows)} validation rows (other users' validation interactions), {sum(vrows['label']):.0f} liked; "
            f"scored every {cfg.eval_every} steps, the best step is kept")
    bf16, dev = cfg.use_bf16(), cfg.torch_device()
    warn_if_emulated_bf16(dev, bf16)
    check_protocol(out, protocol_of(cfg, ds))
    runs_path = out / "runs.json"
    runs = _load_runs(runs_path)
    done = {(r["method"], r["shots"], r["seed"]) for r in runs}

    def record(method, shots, seed, auc, seconds, **extra):
        runs.append({"method": method, "shots": shots, "seed": seed, "AUC": auc, "seconds": round(seconds, 1),
                     **extra})
        _save_json(runs_path, runs)
        picked = f", step {extra['best_step']} picked on validation" if extra.get("best_step") is not None else ""
        log(f"{method:>15} shots={shots:<4} seed={seed}: AUC {auc:.4f} ({seconds:.0f} s{picked})")

    if set(BASELINES) - {m for m, _, _ in done}:
        t = time.time()
        for name, auc in baseline_aucs(ctx, users, cfg.sasrec_epochs, cfg.holdout_seed, dev).items():
            if (name, 0, cfg.holdout_seed) not in done:
                record(name, 0, cfg.holdout_seed, auc, time.time() - t)
    if cfg.zero_shot and ("zero-shot", 0, 0) not in done:
        t = time.time()
        ck = untuned_checkpoint(cfg.model, ctx.index, ctx.user_index, max_source_len=cfg.max_source_len)
        ck.model.to(dev)
        extra = {"valid_AUC": auc_of(ck, vrows, cfg.eval_batch, bf16)} if vrows is not None else {}
        record("zero-shot", 0, 0, auc_of(ck, rows, cfg.eval_batch, bf16), time.time() - t, **extra)
        del ck
    full_seeds = cfg.seeds if cfg.full_seeds is None else cfg.full_seeds
    plan = [(p, n, s) for n in cfg.shots for p in cfg.peft for s in (cfg.seeds if p == "lora" else full_seeds)
            if p == "lora" or n in cfg.full_shots]
    for peft, shots, seed in plan:
        method = "lora" if peft == "lora" else "full"
        if (method, shots, seed) in done:
            continue
        t = time.time()
        ck_dir = out / "runs" / f"{method}-{shots}-s{seed}"
        cbs, extra = [], {}
        if vrows is not None:
            cbs = [validation_callback(vrows, cfg.eval_every, cfg.steps, cfg.eval_batch, bf16,
                                       log=lambda m: log(f"{method} shots={shots} seed={seed}{m}"))]
        _train_one(cfg, peft, shots, seed, ck_dir, cbs)
        if cbs:
            st = cbs[0].state
            extra = {"best_step": st.best_step, "valid_AUC": st.best_auc, "valid_history": st.history}
        ck = load_checkpoint(ck_dir, data=ds, device=dev)  # scores the RELOADED checkpoint, as a user would
        record(method, shots, seed, auc_of(ck, rows, cfg.eval_batch, bf16), time.time() - t, **extra)
        del ck
        if not cfg.keep_checkpoints:
            shutil.rmtree(ck_dir, ignore_errors=True)
    runs = [r for r in runs if r["method"] != "baselines"]
    meta = {"data": str(Path(cfg.data).resolve()), "data_hash": ds.data_hash, "split": "test",
            "model": cfg.model, "template": cfg.template, "eval_users": len(users),
            "holdout_seed": cfg.holdout_seed, "n_rows": len(rows), "liked": int(sum(rows["label"])),
            "valid_rows": len(vrows) if vrows is not None else 0,
            "seeds": cfg.seeds, "device_used": dev, "config": {k: v for k, v in vars(cfg).items()}}
    return runs, meta


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and standard deviation of AUC per (method, shots), in p5x.metrics table rows."""
    groups: dict[tuple, list[float]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["shots"]), []).append(r["AUC"])
    order = {"zero-shot": 0, "popularity": 1, "like-rate": 2, "sasrec-sigmoid": 3, "lora": 4, "full": 5}
    out = []
    for (method, shots), aucs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        a = np.asarray(aucs, dtype=float)
        out.append({"model": method, "task": "preference (liked = rating > 3)",
                    "protocol": f"{shots} shots" if method in ("lora", "full") else "-", "templates": "-",
                    "metrics": {"AUC": float(a.mean()), "AUC std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                                "runs": len(a)}})
    return out


def curve_markdown(summary: list[dict]) -> str:
    lines = ["| model | shots | AUC (mean) | std | runs |", "|---|---|---|---|---|"]
    for r in summary:
        m = r["metrics"]
        lines.append(f"| {r['model']} | {r['protocol'].replace(' shots', '') if r['protocol'] != '-' else '-'} "
                     f"| {m['AUC']:.4f} | {m['AUC std']:.4f} | {m['runs']} |")
    return "\n".join(lines) + "\n"


def plot_curve(runs: list[dict], path: Path) -> None:
    """AUC against shots (log scale): each run as a dot, the seed means as lines, baselines flat."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, color in (("lora", "C0"), ("full", "C3")):
        pts = [(r["shots"], r["AUC"]) for r in runs if r["method"] == method]
        if not pts:
            continue
        xs = sorted({s for s, _ in pts})
        ax.scatter(*zip(*pts), color=color, alpha=0.5, s=14)
        ax.plot(xs, [np.mean([a for s, a in pts if s == x]) for x in xs], "-o", color=color, label=method)
    for k, method in enumerate(("zero-shot", "popularity", "like-rate", "sasrec-sigmoid")):
        a = [r["AUC"] for r in runs if r["method"] == method]
        if a:
            ax.axhline(float(np.mean(a)), ls="--", color=f"C{k + 4}", label=method)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training examples (shots)")
    ax.set_ylabel("AUC on held-out users")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def plot_validation(runs: list[dict], path: Path) -> bool:
    """Validation AUC against optimizer step, one line per run (colour by shot count), the kept
    step circled. False (nothing written) when no run was selected on validation."""
    runs = [r for r in runs if r.get("valid_history")]
    if not runs:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({r["shots"] for r in runs})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    labelled = set()
    for r in runs:
        c = f"C{shots.index(r['shots'])}" if r["method"] == "lora" else "C3"
        h, key = r["valid_history"], f"{r['method']} {r['shots']}"
        ax.plot([x["step"] for x in h], [x["AUC"] for x in h], "-", color=c, alpha=0.7, lw=1,
                label=None if key in labelled else key)
        labelled.add(key)
        if r.get("best_step") is not None:
            ax.scatter([r["best_step"]], [r["valid_AUC"]], facecolors="none", edgecolors=c, s=40)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation AUC (kept step circled)")
    ax.legend(fontsize=8, title="method, shots")
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return True


def write_outputs(out: Path, runs: list[dict], meta: dict) -> list[dict]:
    from . import metrics as M

    summary = summarize(runs)
    M.write_results(out / "metrics.json", summary, {**meta, "runs": runs,
                                                     "device": M.device_name(meta.get("device_used", "cpu"))})
    tmp = out / ".curve.md.tmp"
    tmp.write_text(curve_markdown(summary))
    tmp.replace(out / "curve.md")
    plot_curve(runs, out / "curve.png")
    plot_validation(runs, out / "validation.png")
    return summary


# ----------------------------------------------------------------------------------------------
# CLI


def _ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise ConfigError(f"{flag}: empty list")
    return vals


def build_parser() -> argparse.ArgumentParser:
    d = FewShotConfig(data="", out="")
    ap = argparse.ArgumentParser(prog="python -m p5x.fewshot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="normalized dataset with ratings and titles")
    ap.add_argument("--out", required=True, help="output directory (metrics.json, curve.md, curve.png)")
    ap.add_argument("--model", default=d.model, help=f"backbone (default: {d.model})")
    ap.add_argument("--shots", default="16,64,256", help="training example counts (default: 16,64,256)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds per shot count (default: 0,1,2)")
    ap.add_argument("--peft", default="lora,none", help="lora, none or both (default: lora,none)")
    ap.add_argument("--full-shots", default="64", help="shot counts for --peft none (default: 64)")
    ap.add_argument("--full-seeds", help="seeds for --peft none runs (default: the --seeds list)")
    ap.add_argument("--eval-users", type=int, default=d.eval_users, help="held-out users (0: all; default: 300)")
    ap.add_argument("--holdout-seed", type=int, default=d.holdout_seed, help="seed of the held-out draw")
    ap.add_argument("--template", default=d.template, help=f"evaluation template id (default: {d.template})")
    ap.add_argument("--steps", type=int, default=d.steps,
                    help=f"optimizer steps per run at every shot count; the shots repeat as epochs (default: {d.steps})")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default: {d.batch_size}")
    ap.add_argument("--lr-lora", type=float, default=d.lr_lora, help=f"LoRA learning rate (default: {d.lr_lora})")
    ap.add_argument("--lr-full", type=float, default=d.lr_full, help=f"full fine-tuning lr (default: {d.lr_full})")
    ap.add_argument("--lora-rank", type=int, default=d.lora_rank, help=f"default: {d.lora_rank}")
    ap.add_argument("--lora-alpha", type=int, default=d.lora_alpha, help=f"default: {d.lora_alpha}")
    ap.add_argument("--lora-targets", default=d.lora_targets, help=f"default: {d.lora_targets}")
    ap.add_argument("--max-source-len", type=int, default=d.max_source_len, help="max prompt tokens")
    ap.add_argument("--sasrec-epochs", type=int, default=d.sasrec_epochs, help="sasrec-sigmoid epochs")
    ap.add_argument("--eval-batch", type=int, default=d.eval_batch, help="prompts per scoring batch")
    ap.add_argument("--valid-users", type=int, default=d.valid_users,
                    help="users (not held out) whose validation interaction picks each run's step by AUC, "
                         f"TALLRec's early stopping; 0: keep the last step (default: {d.valid_users})")
    ap.add_argument("--eval-every", type=int, default=d.eval_every,
                    help=f"optimizer steps between validation scorings (default: {d.eval_every})")
    ap.add_argument("--bf16", default=d.bf16, choices=("auto", "on", "off"),
                    help="bf16 autocast for training and scoring: auto = on CUDA only; on also uses a CPU's "
                         "bf16 units (about 1.7x faster on AVX512-BF16; emulated, so far slower, on a CPU without them) "
                         "(default: auto)")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoint under OUT/runs")
    ap.add_argument("--no-zero-shot", action="store_true", help="skip the untuned-model row")
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.steps < 1:
            raise ConfigError(f"--steps: must be at least 1, got {a.steps}")
        if a.eval_every < 1:  # checked here, not minutes later when the first run starts
            raise ConfigError(f"--eval-every: must be at least 1, got {a.eval_every}")
        if min(_ints(a.shots, "--shots")) < 1:
            raise ConfigError(f"--shots: every count must be at least 1, got {a.shots!r}")
        peft = [p.strip() for p in a.peft.split(",") if p.strip()]
        if not peft or set(peft) - {"lora", "none"}:
            raise ConfigError(f"--peft: expected lora, none or lora,none, got {a.peft!r}")
        cfg = FewShotConfig(a.data, a.out, a.model, _ints(a.shots, "--shots"), _ints(a.seeds, "--seeds"), peft,
                            _ints(a.full_shots, "--full-shots"),
                            _ints(a.full_seeds, "--full-seeds") if a.full_seeds else None, a.eval_users, a.holdout_seed, a.template,
                            a.steps, a.batch_size, a.lr_lora, a.lr_full, a.lora_rank, a.lora_alpha,
                            a.lora_targets, a.max_source_len, a.sasrec_epochs, a.eval_batch, a.valid_users,
                            a.eval_every, a.bf16, a.keep_checkpoints, not a.no_zero_shot, a.device)
        runs, meta = run_sweep(cfg, log=lambda m: print(m, flush=True))
        summary = write_outputs(Path(cfg.out), runs, meta)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(curve_markdown(summary), end="")
    print(f"wrote {Path(cfg.out) / 'metrics.json'}, curve.md, curve.png (and validation.png)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
