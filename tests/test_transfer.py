"""Tests of zero-shot transfer: target log-probabilities and `python -m p5x.transfer` on two toy domains."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from p5x.checkpoint import Checkpoint
from p5x.features import Featurizer
from p5x.inference import target_logprob
from p5x.modeling import P5XModel, build_backbone, resolve_backbone
from p5x.tokenization import train_sentencepiece

torch.set_num_threads(1)

CORPUS = ["user bought a red cream and a blue serum", "which one next ? the green lotion",
          "gift card for a birthday", "yes", "no", "a scented candle with a glass jar"] * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_sentencepiece(CORPUS, tmp_path_factory.mktemp("spm"), vocab_size=120)


def _ckpt(tokenizer, backbone: str) -> Checkpoint:
    torch.manual_seed(0)
    model = P5XModel(build_backbone(resolve_backbone(backbone), tokenizer), whole_word=True, max_words=64)
    model.eval()
    fz = Featurizer(tokenizer, model.decoder_only, True, 64, 16, 64)
    return Checkpoint(model, tokenizer, fz, None, None, {})


def _manual(ck: Checkpoint, prompt: str, target: str) -> float:
    """log P(target | prompt) from one unbatched forward pass, token by token."""
    batch = ck.featurizer([{"inputs": prompt, "targets": target}])
    labels = batch.pop("labels")[0]
    with torch.no_grad():
        if ck.model.decoder_only:
            logits = ck.model(**batch).logits[0]
            pos = [t for t in range(len(labels)) if labels[t] != -100]
            return float(sum(torch.log_softmax(logits[t - 1], -1)[labels[t]] for t in pos))
        logits = ck.model(**batch, labels=labels[None]).logits[0]
        return float(sum(torch.log_softmax(logits[t], -1)[labels[t]] for t in range(len(labels))))


@pytest.mark.parametrize("backbone", ["t5-tiny", "llama-tiny"])
def test_target_logprob_matches_manual(tokenizer, backbone):
    ck = _ckpt(tokenizer, backbone)
    prompts = ["user bought a red cream , which one next ?"] * 3 + ["gift card for a birthday ?"] * 2
    targets = ["the green lotion", "a blue serum", "yes", "a scented candle with a glass jar", "no"]
    got = target_logprob(ck, prompts, targets, batch_size=4, progress=False)
    want = [_manual(ck, p, t) for p, t in zip(prompts, targets)]
    assert got.shape == (5,) and np.all(got < 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # longer targets carry more (negative) terms: the eos alone is not the whole score
    assert len(set(np.round(got, 4))) == 5


def test_target_logprob_length_mismatch(tokenizer):
    with pytest.raises(ValueError):
        target_logprob(_ckpt(tokenizer, "t5-tiny"), ["a"], ["b", "c"], progress=False)


# ----------------------------------------------------------------------------------------------
# the script on two toy domains


def _kitchen_domain(out: Path, seed: int):
    """A toy dataset whose catalogue text is another domain's: new brands, nouns and categories."""
    from p5x.schema import load_dataset, write_dataset
    from p5x.toydata import make_toy_dataset

    make_toy_dataset(out, n_users=24, n_items=48, seed=seed)
    ds = load_dataset(out)
    swap = {"Lumina": "Ferro", "Corvo": "Olla", "Petalux": "Brava", "Aurem": "Tessa", "cream": "skillet",
            "serum": "kettle", "lotion": "ladle", "balm": "whisk", "gel": "grater", "oil": "teapot",
            "mist": "sieve", "polish": "tray", "soap": "mug", "mask": "bowl"}
    items = []
    for it in ds.items.values():
        title = " ".join(swap.get(w, w) for w in it.title.split())
        items.append(replace(it, title=title, brand=swap.get(it.brand, it.brand),
                             categories=["Kitchen", "Cookware"], description=None))
    return write_dataset(out, "kitchen", "synthetic", items, ds.interactions, source=f"toy kitchen {seed}")


@pytest.fixture(scope="module")
def domains(toy_dir, tmp_path_factory):
    kitchen = tmp_path_factory.mktemp("kitchen") / "kitchen"
    ds_b = _kitchen_domain(kitchen, seed=3)
    return toy_dir, kitchen, ds_b


def test_kitchen_domain_differs(domains, toy_ds):
    _, _, ds_b = domains
    titles_a = {it.title for it in toy_ds.items.values()}
    titles_b = {it.title for it in ds_b.items.values()}
    assert not titles_a & titles_b
    assert not {it.brand for it in toy_ds.items.values()} & {it.brand for it in ds_b.items.values()}


def test_transfer_cli_end_to_end(domains, tmp_path, capsys):
    from p5x.transfer import main

    src, tgt, _ = domains
    out = tmp_path / "zs"
    rc = main(["--source", str(src), "--target", str(tgt), "--out", str(out), "--max-steps", "4",
               "--train-batch-size", "16", "--vocab-size", "300", "--max-source-len", "200",
               "--max-target-len", "24", "--max-users", "5", "--device", "cpu", "--no-progress"])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text())
    rows, meta = res["rows"], res["meta"]
    a, b = src.name, tgt.name
    model_rows = [r for r in rows if r["model"].startswith("p5x")]
    directions = {r["direction"] for r in model_rows}
    assert directions == {f"{a}→{a}", f"{a}→{b}"}
    ab = {(r["task"], r["templates"]): r for r in model_rows if r["direction"] == f"{a}→{b}"}
    assert {"zeroshot/rating", "zeroshot/like", "zeroshot/explain", "zeroshot/next_text"} <= {t for t, _ in ab}
    assert ("zeroshot/like", "unseen") in ab
    nt = ab[("zeroshot/next_text", "seen")]
    assert nt["protocol"] == "sampled 1-of-20, title log-prob"
    m = nt["metrics"]
    assert 0.0 <= m["HR@1"] <= m["HR@5"] <= m["HR@10"] <= 1.0 and m["title_ties"] == 0.0
    assert ab[("zeroshot/rating", "seen")]["metrics"]["n"] == ab[("zeroshot/rating", "seen")]["n"] > 0
    # baselines on both datasets; the rating baseline uses A's training mean
    names = {r["model"] for r in rows if not r["model"].startswith("p5x")}
    assert f"random @ {b}" in names and f"popularity (visible histories) @ {a}" in names
    assert any(n.startswith(f"mean rating of {a} train") and n.endswith(f"@ {b}") for n in names)
    cov = meta["per_source"][a]["tokenizer"]
    assert cov[f"{a}→{b}"]["unk_rate"] >= cov[f"{a}→{a}"]["unk_rate"] and cov[f"{a}→{b}"]["tokens"] > 0
    assert cov[f"{a}→{b}"]["tokens_per_word"] > cov[f"{a}→{a}"]["tokens_per_word"]
    assert set(meta["data_hash"]) == {a, b}
    table = (out / "metrics.md").read_text()
    assert f"{a}→{b}" in table and f"{a}→{a}" in table
    assert f"{a}→{b}" in capsys.readouterr().out


def test_transfer_refuses_checkpoint_without_zeroshot(domains, tmp_path, capsys):
    from p5x.training import TrainConfig, train
    from p5x.transfer import main

    src, tgt, _ = domains
    ck = train(TrainConfig(data=str(src), output=str(tmp_path / "ck"), tasks="rating", max_steps=1,
                           batch_size=8, vocab_size=200, use_cpu=True, save_steps=100))
    rc = main(["--source", str(src), "--target", str(tgt), "--checkpoint", str(ck), "--out",
               str(tmp_path / "o"), "--no-progress", "--device", "cpu"])
    assert rc == 2 and "not the zeroshot family" in capsys.readouterr().err


def test_transfer_refuses_titleless_target(domains, tmp_path, capsys):
    from p5x.schema import load_dataset, write_dataset
    from p5x.transfer import main

    src, tgt, ds_b = domains
    bare = tmp_path / "bare"
    write_dataset(bare, "bare", "synthetic", [replace(it, title=None) for it in ds_b.items.values()],
                  ds_b.interactions)
    rc = main(["--source", str(src), "--target", str(bare), "--out", str(tmp_path / "o"),
               "--max-steps", "1", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "title" in err and "bare" in err


def test_pairs_and_argument_errors(tmp_path):
    from p5x.errors import ConfigError
    from p5x.transfer import build_parser, config_from_args

    parse = lambda *a: config_from_args(build_parser().parse_args([*a, "--out", str(tmp_path)]))  # noqa: E731
    cfg = parse("--pairs", "a,b,c", "--max-steps", "3")
    assert [p.name for p in cfg.sources] == ["a", "b", "c"] and cfg.targets == cfg.sources
    assert cfg.train["max_steps"] == 3 and cfg.train["tasks"] == "zeroshot"
    for bad in (["--pairs", "a"], ["--pairs", "a,b", "--source", "a"], ["--source", "a"],
                ["--source", "a", "--target", "b", "--templates", "seen,odd"]):
        with pytest.raises(ConfigError):
            parse(*bad)
