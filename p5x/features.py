"""Feature conversion: rendered rows {inputs, targets, task, ...} -> tensors for one backbone kind.

Encoder-decoder (T5): input_ids/attention_mask hold the prompt, labels hold target + </s>, padded
with -100 so padding never counts in the loss.

Decoder-only (LLaMA): one sequence prompt + target + eos; labels copy the target part and mask the
prompt with -100, so the model learns to answer, not to recite prompts. Padding side follows
`padding_side` (left for generation so every prompt ends at the same position).

Whole-word ids (P5): every token gets the 1-based index of the whitespace-delimited word its
characters come from, read from the tokenizer's character OFFSETS. Offsets work the same for
SentencePiece and byte-level BPE, where the '▁' prefix trick (P5's) would only fit SentencePiece
and would give an id such as `<i0_3><i1_7>` one index per piece. Special tokens, padding and (for
decoder-only) target tokens get 0, the embedding's padding row.

Word numbering "recency" (`train.py --word-numbering recency`): an item id inside a list of item
ids (a run of consecutive item words: a history, a candidate list, or a lone item) is numbered by
how many items follow it in that list, counted down from the top row of the table (the last item
of a list gets max_words - 1, the one before it max_words - 2, ...; RECENCY_SPAN and further share
a row); other words keep P5's numbers, kept below those rows. Under P5's numbering the last history
item's word id depends on the history's length and on where the wording puts it; under recency it
is the same row in every prompt, which is what a next-item prompt in an unseen wording needs to find.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from .errors import ConfigError

FAMILY_IDS = {"rating": 0, "sequential": 1, "direct": 2, "explanation": 3, "review": 4}
_WORD = re.compile(r"\S+")
# an item id as rendered: one or more index pieces <i{level}_{n}> with nothing between (p5x.indexing)
ITEM_WORD = re.compile(r"(?:<i\d+_\d+>)+")
WORD_NUMBERINGS = ("p5", "recency")
RECENCY_SPAN = 40  # under "recency", items this far or further from the end of their list share a row


def word_index_per_char(text: str) -> np.ndarray:
    """An array giving each character's word number (1..K), 0 for whitespace."""
    out = np.zeros(len(text) + 1, dtype=np.int64)
    for k, m in enumerate(_WORD.finditer(text), start=1):
        out[m.start():m.end()] = k
    return out


def word_numbering_problem(numbering: str, max_words: int) -> str | None:
    """Why `numbering` cannot number words into a table of `max_words` rows (None when it can);
    shared by Featurizer and train.py's flag check so both refuse the same settings."""
    if numbering not in WORD_NUMBERINGS:
        return f"expected one of {', '.join(WORD_NUMBERINGS)}, got {numbering!r}"
    if numbering != "p5" and max_words < RECENCY_SPAN + 8:
        return f"{numbering!r} needs max words (the whole-word table) of at least {RECENCY_SPAN + 8}, got {max_words}"
    return None


def recency_numbers(text: str, max_words: int) -> np.ndarray:
    """Word number (P5's, 0..K) -> its id under "recency" numbering (see the module docstring)."""
    words = _WORD.findall(text)
    is_item = np.fromiter((ITEM_WORD.fullmatch(w) is not None for w in words), bool, len(words))
    # items after each word within its run: count runs from the end, restarting at every other word
    rev = is_item[::-1]
    seen = np.cumsum(rev)
    after = (seen - np.maximum.accumulate(np.where(rev, 0, seen)) - 1)[::-1]
    plain_top = max_words - RECENCY_SPAN - 2  # P5 numbers stay below the recency rows
    ids = np.where(is_item, max_words - 1 - np.minimum(after, RECENCY_SPAN),
                   np.minimum(np.arange(1, len(words) + 1), plain_top))
    return np.concatenate([[0], ids]).astype(np.int64)


def whole_word_ids_from_offsets(text: str, offsets, max_words: int, numbering: str = "p5") -> list[int]:
    """Word index of each token from its (start, end) character span; 0 for spans of no text.

    A token is assigned the word of its LAST character: byte-level tokens such as ' world' start
    with the space that precedes the word. Indices above max_words - 1 are clipped to it.
    `numbering` "recency" renumbers the words first (recency_numbers).
    """
    chars = word_index_per_char(text)
    if numbering == "recency":
        chars = recency_numbers(text, max_words)[chars]
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    ends = np.clip(off[:, 1] - 1, 0, len(text))
    ids = np.where(off[:, 1] > off[:, 0], chars[ends], 0)
    return np.minimum(ids, max_words - 1).tolist()


def _spaces_are_word_starts(tokenizer) -> bool:
    """True for byte-level BPE-style tokenizers, where ' yes' and 'yes' encode differently."""
    a = tokenizer(" yes", add_special_tokens=False)["input_ids"]
    b = tokenizer("yes", add_special_tokens=False)["input_ids"]
    return bool(a) and a != b and tokenizer.decode(a[:1]).startswith(" ")


class Featurizer:
    """A data collator: rows (dicts with 'inputs' and 'targets') -> a dict of tensors."""

    def __init__(self, tokenizer, decoder_only: bool, whole_word: bool = True, max_source_len: int = 512,
                 max_target_len: int = 64, max_words: int = 512, padding_side: str = "right",
                 target_space: bool | None = None, word_numbering: str = "p5"):
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        problem = word_numbering_problem(word_numbering, max_words)
        if problem:
            raise ConfigError(f"word_numbering: {problem}")
        self.word_numbering = word_numbering
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ConfigError("tokenizer: needs a pad token and an eos token")
        self.tokenizer, self.decoder_only, self.whole_word = tokenizer, decoder_only, whole_word
        self.max_source_len, self.max_target_len, self.max_words = max_source_len, max_target_len, max_words
        self.padding_side = padding_side
        # A decoder-only model reads the target right after the prompt. With a byte-level BPE
        # tokenizer, "yes" glued to the prompt is the rare mid-word token 'yes', not the word 'Ġyes'
        # a pretrained model puts after a space: SmolLM2 gives it ~e^-9 and a few-shot run spends
        # its steps learning the glue. So text targets start with a space there. SentencePiece
        # adds its own word-start mark (no space needed), and id targets (<i0_3>...) are new
        # tokens either way, so they are left as they are. Checkpoints record the choice.
        self.target_space = (decoder_only and _spaces_are_word_starts(tokenizer)) if target_space is None \
            else bool(target_space)
        # training's --content-prior: batches also carry prior_rows (next_item_rows)
        self.mark_next_items = False

    def target_text(self, text: str) -> str:
        """The text the target encoder tokenizes for `text` (see target_space)."""
        if self.target_space and text and not text[0].isspace() and not text.startswith("<"):
            return " " + text
        return text

    def answer_ids(self, words: Sequence[str] = ("yes", "no")) -> list[int]:
        """The first token the model emits for each answer word, as the targets are encoded."""
        ids = [self.encode_target(w)[0] for w in words]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"tokenizer: answer words {list(words)} share a first token "
                              f"{self.tokenizer.convert_ids_to_tokens(ids[0])!r}")
        return ids

    # -- the one target encoder (the decoding trie reuses it) --------------------------------
    def encode_targets(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each target followed by eos, truncated to max_target_len (eos kept)."""
        enc = self.tokenizer([self.target_text(t) for t in texts], add_special_tokens=False)["input_ids"]
        keep = self.max_target_len - 1
        return [ids[:keep] + [self.tokenizer.eos_token_id] for ids in enc]

    def encode_target(self, text: str) -> list[int]:
        return self.encode_targets([text])[0]

    # -- prompts -------------------------------------------------------------------------------
    def _prompts(self, texts: Sequence[str]):
        """(ids, word ids) per prompt; T5 prompts end with </s>, decoder-only prompts do not."""
        add_eos = not self.decoder_only
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        keep = self.max_source_len - int(add_eos)
        out_ids, out_words = [], []
        for text, ids, offs in zip(texts, enc["input_ids"], enc["offset_mapping"]):
            ids, offs = ids[:keep], offs[:keep]
            words = whole_word_ids_from_offsets(text, offs, self.max_words, self.word_numbering) if offs else []
            if add_eos:
                ids, words = ids + [self.tokenizer.eos_token_id], words + [0]
            out_ids.append(ids)
            out_words.append(words)
        return out_ids, out_words

    def _pad(self, seqs: list[list[int]], value: int, side: str) -> torch.Tensor:
        n = max(len(s) for s in seqs)
        rows = [([value] * (n - len(s)) + s) if side == "left" else (s + [value] * (n - len(s))) for s in seqs]
        return torch.tensor(rows, dtype=torch.long)

    def _pack(self, ids, words, side: str, labels=None) -> dict[str, torch.Tensor]:
        batch = {"input_ids": self._pad(ids, self.tokenizer.pad_token_id, side),
                 "attention_mask": self._pad([[1] * len(s) for s in ids], 0, side)}
        if self.whole_word:
            batch["whole_word_ids"] = self._pad(words, 0, side)
        if labels is not None:
            batch["labels"] = self._pad(labels, -100, side)
        return batch

    def encode_prompts(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Prompts alone, for generation (decoder-only: always left-padded)."""
        ids, words = self._prompts(texts)
        return self._pack(ids, words, "left" if self.decoder_only else self.padding_side)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids, words = self._prompts([r["inputs"] for r in rows])
        targets = self.encode_targets([r["targets"] for r in rows])
        if self.decoder_only:
            labels = [[-100] * len(p) + t for p, t in zip(ids, targets)]
            words = [w + [0] * len(t) for w, t in zip(words, targets)]
            ids = [p + t for p, t in zip(ids, targets)]
            batch = self._pack(ids, words, self.padding_side, labels)
        else:
            batch = self._pack(ids, words, self.padding_side)
            batch["labels"] = self._pad(targets, -100, "right")
        if all("task" in r for r in rows):
            # consumed by the trainer for per-family loss logging, never passed to the model
            batch["task_ids"] = torch.tensor([FAMILY_IDS.get(r["task"], -1) for r in rows])
        if self.mark_next_items:
            batch["prior_rows"] = next_item_rows(rows)
        return batch


def next_item_rows(rows: Sequence[dict]) -> torch.Tensor:
    """bool [len(rows)]: which rows are next-item prompts (family sequential, kind next), the rows
    whose answer training's --content-prior adds its bonus to. Rows must carry task and kind."""
    if not all("task" in r and "kind" in r for r in rows):
        raise ConfigError("--content-prior: training rows need their 'task' and 'kind' columns")
    return torch.tensor([r["task"] == "sequential" and r["kind"] == "next" for r in rows], dtype=torch.bool)
