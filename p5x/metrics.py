"""Evaluation metrics as pure functions, and the results file (metrics.json + a markdown table).

Ranking metrics take, per evaluated user, a ranked list of item ids (best first; None or junk
entries for invalid generations are fine: they just never match) and the one held-out target:

    hit_rate_at_k = mean[target in top k]
    ndcg_at_k     = mean[1 / log2(rank + 2) if rank < k else 0]     (rank 0-based, one relevant item)
    mrr           = mean[1 / (rank + 1) if found else 0]            (over the whole list, or the top k)

Text metrics: BLEU through sacrebleu (corpus level, its standard "13a" tokenization, 0-100 scale)
and ROUGE-1/2/L F1 through rouge-score (no stemming, per-pair F1 averaged, reported x100), so that
numbers are comparable with P5's tables, which use the same scales.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .paths import atomic_output

BLEU_TOKENIZE = "13a"


# ----------------------------------------------------------------------------------------------
# ranking


def target_ranks(ranked_lists: Sequence[Sequence], targets: Sequence) -> np.ndarray:
    """0-based position of each target in its ranked list (first occurrence), -1 where absent."""
    if len(ranked_lists) != len(targets):
        raise ValueError(f"{len(ranked_lists)} ranked lists but {len(targets)} targets")
    ranks = np.full(len(targets), -1, dtype=np.int64)
    for u, (lst, tgt) in enumerate(zip(ranked_lists, targets)):
        lst = list(lst)
        try:
            ranks[u] = lst.index(tgt)
        except ValueError:
            pass
    return ranks


def _ranks(ranked_lists, targets, ranks):
    return target_ranks(ranked_lists, targets) if ranks is None else np.asarray(ranks)


def hit_rate_at_k(ranked_lists, targets, k: int, ranks=None) -> float:
    """Fraction of users whose target is in the top k. `ranks` (from target_ranks) skips re-searching."""
    r = _ranks(ranked_lists, targets, ranks)
    return float(np.mean((r >= 0) & (r < k))) if len(r) else 0.0


def ndcg_at_k(ranked_lists, targets, k: int, ranks=None) -> float:
    """NDCG@k with one relevant item per user: 1/log2(rank+2) when rank < k (0-based), else 0."""
    r = _ranks(ranked_lists, targets, ranks)
    if not len(r):
        return 0.0
    hit = (r >= 0) & (r < k)
    gain = np.where(hit, 1.0 / np.log2(np.where(hit, r, 0) + 2.0), 0.0)
    return float(np.mean(gain))


def mrr(ranked_lists, targets, k: int | None = None, ranks=None) -> float:
    """Mean reciprocal rank of the target (0 when absent, or beyond k when k is given)."""
    r = _ranks(ranked_lists, targets, ranks)
    if not len(r):
        return 0.0
    hit = (r >= 0) if k is None else ((r >= 0) & (r < k))
    return float(np.mean(np.where(hit, 1.0 / (np.where(hit, r, 0) + 1.0), 0.0)))


# users grouped by how many items their history holds, for breakdowns of next-item ranking
# (--by-history in p5x.evaluate and p5x.baselines); the prompt shows at most the last 20 of them
HISTORY_GROUPS = ((0, 0), (1, 3), (4, 5), (6, 10), (11, 20), (21, None))


def history_group(n: int) -> str:
    """The HISTORY_GROUPS label of a history of n items: '0', '1-3', ..., '21+'."""
    for lo, hi in HISTORY_GROUPS:
        if n >= lo and (hi is None or n <= hi):
            return f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")
    raise ValueError(f"history length must be >= 0, got {n}")


HISTORY_LABELS = tuple(history_group(lo) for lo, _ in HISTORY_GROUPS)


def ranking_metrics_by_group(ranked_lists, targets, groups, ks=(5, 10, 20), ndcg_ks=None,
                             order=None) -> list[tuple[str, int, dict[str, float]]]:
    """ranking_metrics over each group of users apart: [(label, users, metrics)].

    `groups` holds one label per user; groups come in `order` (labels missing from it last, in
    first-seen order), and a group without users is left out. Each group's metrics weighted by its
    users average back to ranking_metrics over everyone.
    """
    r = target_ranks(ranked_lists, targets)
    g = np.asarray(groups, dtype=object)
    if len(g) != len(r):
        raise ValueError(f"{len(g)} group labels but {len(r)} users")
    present, order = set(g), list(order or ())
    labels = [x for x in order if x in present] + [x for x in dict.fromkeys(g) if x not in order]
    out = []
    for label in labels:
        sub = r[g == label]
        out.append((label, len(sub), _metrics_of_ranks(sub, ks, ndcg_ks)))
    return out


def history_groups_protocol(protocol: str, label: str, users: int) -> str:
    """'full ranking' -> 'full ranking, users with 4-5 history items (n=9021)'."""
    return f"{protocol}, users with {label} history items (n={users})"


# the short names in CONTRIBUTING.md's seam
hit_rate, ndcg = hit_rate_at_k, ndcg_at_k


def ranking_metrics(ranked_lists, targets, ks=(5, 10, 20), ndcg_ks=None) -> dict[str, float]:
    """{"HR@k": .., "NDCG@k": ..} for each k (NDCG at `ndcg_ks`, default the same ks)."""
    return _metrics_of_ranks(target_ranks(ranked_lists, targets), ks, ndcg_ks)


def _metrics_of_ranks(r: np.ndarray, ks, ndcg_ks) -> dict[str, float]:
    out = {f"HR@{k}": hit_rate_at_k(None, None, k, ranks=r) for k in ks}
    out.update({f"NDCG@{k}": ndcg_at_k(None, None, k, ranks=r) for k in (ks if ndcg_ks is None else ndcg_ks)})
    return out


# ----------------------------------------------------------------------------------------------
# rating and scores


def _pair(pred, true):
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"predictions {p.shape} and targets {t.shape} differ in shape")
    if p.size == 0:
        raise ValueError("no predictions")
    return p, t


def rmse(pred, true) -> float:
    p, t = _pair(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mae(pred, true) -> float:
    p, t = _pair(pred, true)
    return float(np.mean(np.abs(p - t)))


def auc(labels, scores) -> float:
    """ROC AUC via the rank-sum (Mann-Whitney) statistic; tied scores count one half."""
    from scipy.stats import rankdata

    y, s = _pair(labels, scores)
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    r = rankdata(s)  # average ranks for ties
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ----------------------------------------------------------------------------------------------
# text


def _bleu(preds, refs, order):
    from sacrebleu.metrics import BLEU

    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    return float(BLEU(max_ngram_order=order, tokenize=BLEU_TOKENIZE).corpus_score(list(preds), [list(refs)]).score)


def bleu4(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU-4 (sacrebleu, 13a tokenization, 0-100), one reference per prediction."""
    return _bleu(preds, refs, 4)


def bleu2(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU-2 (sacrebleu, 13a tokenization, 0-100)."""
    return _bleu(preds, refs, 2)


def rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 x100 (rouge-score, no stemming) over prediction/reference pairs."""
    from rouge_score import rouge_scorer

    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("no predictions")
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=False)
    f = np.zeros((len(preds), 3))
    for i, (p, r) in enumerate(zip(preds, refs)):
        s = scorer.score(r, p)  # (target, prediction)
        f[i] = [s[k].fmeasure for k in keys]
    m = f.mean(0) * 100.0
    return {"ROUGE-1": float(m[0]), "ROUGE-2": float(m[1]), "ROUGE-L": float(m[2])}


# ----------------------------------------------------------------------------------------------
# results files

ROW_KEYS = ("model", "task", "protocol", "templates", "metrics")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}"
    return str(v)


def family_of(task: str) -> str:
    """'sequential/next' and 'sequential' -> 'sequential'; 'direct yes/no (...)' -> 'direct'."""
    return task.split("/")[0].split(" ")[0]


def _one_table(rows: list[dict]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for name in r["metrics"]:
            if name not in names:
                names.append(name)
    head = ["model", "task", "protocol", "templates"] + names
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [str(r["model"]), str(r["task"]), str(r["protocol"]), str(r["templates"])]
        cells += [_fmt(r["metrics"].get(n)) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_table(rows: list[dict]) -> str:
    """Markdown: one table per task family (model | task | protocol | templates | its metrics).

    Splitting by family keeps each table to the metrics that family reports, and puts the
    baselines' rows under the model's rows of the same family.
    """
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"result row lacks {missing}: {r}")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(family_of(str(r["task"])), []).append(r)
    out: list[str] = []
    for fam, rs in groups.items():
        if len(groups) > 1:
            out += [f"**{fam}**", ""]
        out += _one_table(rs) + [""]
    return "\n".join(out[:-1]) + "\n" if out else ""


def git_commit() -> str | None:
    """HEAD of the repository this package lives in, None outside git (e.g. an installed wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def device_name(device: str | None = None) -> str:
    """'cpu (N cores)' or the CUDA device's name, for the results record."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores)"


def _atomic_write(path: Path, text: str):
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


META_KEYS = ("split", "indexing", "templates", "seed", "data_hash", "commit", "device")


def write_results(path_json: str | Path, rows: list[dict], meta: dict) -> Path:
    """Write {"meta", "rows"} to path_json and the markdown table to the same name with .md.

    meta should carry split, indexing, template ids, seed and data hash; commit and device are
    filled in when absent, and any of META_KEYS still missing is recorded as null.
    """
    path_json = Path(path_json)
    meta = dict(meta)
    if meta.get("commit") is None:
        meta["commit"] = git_commit()
    if meta.get("device") is None:
        meta["device"] = device_name()
    for k in META_KEYS:
        meta.setdefault(k, None)
    meta.setdefault("written", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    table = format_table(rows)
    _atomic_write(path_json, json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    header = "".join(f"- {k}: {meta[k]}\n" for k in META_KEYS)
    _atomic_write(path_json.with_suffix(".md"), header + "\n" + table)
    return path_json
