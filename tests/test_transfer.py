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
