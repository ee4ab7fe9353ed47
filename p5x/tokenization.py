"""Tokenizers for p5x: a SentencePiece vocabulary trained on the corpus, or a pretrained HF tokenizer,
both with every id piece (`<i0_3>`, `<u1_7>`, see p5x.indexing) registered as one atomic token.

Why atomic pieces: if an id were left to the subword model, `<i0_3>` could split differently after a
space, after a comma or inside a word, so the same item would look different in prompts and targets
and the decoding trie could not be built from a single encoding. As added tokens, the tokenizer cuts
them out of the text before anything else runs, so an id tokenizes identically anywhere.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterable, Sequence

from .errors import ConfigError
from .paths import atomic_output

PIECE_RE = re.compile(r"<[iu]\d+_\d+>")
SPM_FILE = "spiece.model"
# fixed ids so a T5 built from config agrees with the tokenizer: pad=0 is T5's decoder start token
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def _plain_sentences(texts: Iterable[str]):
    """Corpus lines with id pieces cut out: they are user-defined symbols, not text to learn from."""
    for t in texts:
        t = PIECE_RE.sub(" ", t or "").strip()
        if t:
            yield t


def train_sentencepiece(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000,
                        user_defined_symbols: Sequence[str] = (), seed_words: Sequence[str] = ("yes", "no")):
    """Train a unigram SentencePiece model on `texts`, write out_dir/spiece.model, return the tokenizer.

    `user_defined_symbols` (the id pieces) become atomic tokens, on top of `vocab_size` text pieces:
    atomic indexing gives every item a piece of its own, more than a text vocabulary holds (Beauty:
    12,101), and SentencePiece refuses a total smaller than its symbols. `vocab_size` is an upper
    bound: on a small corpus the text part is as large as the text supports. `seed_words` are
    repeated in the corpus so each becomes a single piece (yes/no answers are read from one token's
    logit).
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = list(_plain_sentences(texts)) + [" ".join(seed_words)] * 50
    symbols = list(dict.fromkeys(user_defined_symbols))
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, vocab_size=vocab_size + len(symbols), model_type="unigram",
        user_defined_symbols=symbols, pad_id=PAD_ID, eos_id=EOS_ID,
        unk_id=UNK_ID, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0,
        input_sentence_size=2_000_000, shuffle_input_sentence=True, num_threads=2, minloglevel=2)
    with atomic_output(out_dir / SPM_FILE) as tmp:
        tmp.write_bytes(buf.getvalue())
    return load_sentencepiece(out_dir, user_defined_symbols)


def load_sentencepiece(model_dir: str | Path, pieces: Sequence[str] = ()):
    """The fast (offset-capable) T5 tokenizer over model_dir/spiece.model, with `pieces` atomic."""
    from transformers import T5Tokenizer

    tok = T5Tokenizer.from_pretrained(str(model_dir), extra_ids=0)
    add_pieces(tok, pieces)
    return tok


def add_pieces(tokenizer, pieces: Sequence[str]) -> int:
    """Register id pieces as atomic, non-normalized added tokens; returns how many were registered.

    A caller holding a pretrained model must resize its embeddings to len(tokenizer) afterwards.
    """
    from transformers import AddedToken

    # Compare with the added vocabulary, not the whole one: a piece SentencePiece already holds as a
    # user-defined symbol must still become an added token, or the pre-tokenizer puts a '▁' before it
    # and `<i0_3>` alone encodes as two tokens. transformers up to 5.24 registered such symbols as
    # added tokens on load; 5.25 no longer does. Re-adding one keeps its id (nothing to resize).
    added = tokenizer.get_added_vocab()
    new = [AddedToken(p, normalized=False, special=False, single_word=False, lstrip=False, rstrip=False)
           for p in dict.fromkeys(pieces) if p not in added]
    bad = [p for p in pieces if not PIECE_RE.fullmatch(p)]
    if bad:
        raise ConfigError(f"not an id piece: {bad[0]!r} (expected the form <i0_3> or <u1_7>)")
    return tokenizer.add_tokens(new) if new else 0


def check_pieces_atomic(tokenizer, pieces: Sequence[str]) -> None:
    """Raise ConfigError when some id piece does not encode as exactly one token."""
    if not pieces:
        return
    enc = tokenizer(list(pieces), add_special_tokens=False)["input_ids"]
    for p, ids in zip(pieces, enc):
        if len(ids) != 1:
            raise ConfigError(f"tokenizer: id piece {p!r} is not one token ({len(ids)} tokens)")


def answer_token_ids(tokenizer, words: Sequence[str] = ("yes", "no"), prefix: str = "") -> list[int]:
    """The token id that starts each answer word, looked up at run time (never hard-coded).

    The answer is the first token the model emits for the word, i.e. the first token of the target
    encoding (p5x.features.Featurizer.encode_target, which passes its target prefix): '▁yes' for
    SentencePiece, 'Ġyes' for byte-level BPE (prefix ' '). Raises ConfigError when two words start with the same token (e.g. a bare '▁' piece), since
    their logits could not tell them apart.
    """
    enc = tokenizer([prefix + w for w in words], add_special_tokens=False)["input_ids"]
    out = []
    for w, ids in zip(words, enc):
        if not ids:
            raise ConfigError(f"tokenizer: answer word {w!r} encodes to no token")
        out.append(ids[0])
    if len(set(out)) != len(out):
        raise ConfigError(f"tokenizer: answer words {list(words)} share a first token "
                          f"{tokenizer.convert_ids_to_tokens(out[0])!r}")
    return out
