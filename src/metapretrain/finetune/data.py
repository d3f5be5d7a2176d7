"""UNER sentences → subword ids with first-subword word positions, and length-bucketed batches.

Each sentence becomes `<|endoftext|>` followed by the subwords of its words,
each word after the first with a leading space as in running text, except
next to a character of a script written without spaces (Chinese, Japanese,
Thai): "我" "爱" "1989" "年" is "我爱1989年", as the corpus text has it (on
the UNER Chinese training sets this rebuilds 98.7–99.0% of the sentences'
original text exactly; with a space before every word, none), cut to
`max_length` subwords. The first subword of each word carries the word's label;
the other pieces carry none (the paper's code gives them −100). The decoder is
causal, so the state at a word's first subword has seen only the words to its
left and that one piece; the leading `<|endoftext|>` gives the first word the
same document-start context it had in pretraining. Words cut off by truncation
get no prediction and are scored as `O`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from metapretrain.data.uner import Sentence


def label_names(types: Sequence[str]) -> list[str]:
    """["O", "B-PER", "I-PER", ...] in the configured type order."""
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def _unspaced(ch: str) -> bool:
    """A character of a script written without spaces between words."""
    o = ord(ch)
    return (0x0E00 <= o <= 0x0EFF  # Thai, Lao
            or 0x2E80 <= o <= 0x9FFF  # CJK radicals and punctuation, kana, Bopomofo, CJK ideographs
            or 0xF900 <= o <= 0xFAFF  # CJK compatibility ideographs
            or 0xFF00 <= o <= 0xFFEF  # full-width forms (Chinese punctuation such as ， and ！)
            or 0x20000 <= o <= 0x3FFFF)  # CJK extensions


def running_text_keys(words: Sequence[str]) -> list[str]:
    """Each word as it appears in running text: with a leading space, except the first word and
    a word that meets the previous one at a character of an unspaced script (on either side)."""
    keys = []
    for i, w in enumerate(words):
        joined = i == 0 or (bool(words[i - 1]) and bool(w) and (_unspaced(words[i - 1][-1]) or _unspaced(w[0])))
        keys.append(w if joined else " " + w)
    return keys


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]  # [eos] + subwords, at most max_length
    starts: list[int]  # position of each kept word's first subword in input_ids
    labels: list[int]  # label id of each kept word
    n_words: int  # words in the sentence, kept or not
    gold: tuple[str, ...]  # the sentence's full tag sequence, for scoring


class WordEncoder:
    """Encodes words to subword ids with a cache (UNER repeats words a lot)."""

    def __init__(self, tokenizer) -> None:
        from metapretrain.data.tokenizer import EOS

        self.tok = tokenizer
        self.eos = tokenizer.token_to_id(EOS)
        self._cache: dict[str, list[int]] = {}

    def pieces(self, words: Sequence[str]) -> list[list[int]]:
        keys = running_text_keys(words)
        todo = sorted({k for k in keys if k not in self._cache})
        if todo:
            for key, enc in zip(todo, self.tok.encode_batch(todo, add_special_tokens=False), strict=True):
                if not enc.ids:
                    raise ValueError(f"word {key!r} encodes to no subwords")
                self._cache[key] = list(enc.ids)
        return [self._cache[k] for k in keys]


def encode(sentences: Sequence[Sentence], encoder: WordEncoder, label2id: dict[str, int],
           max_length: int) -> list[Encoded]:
    out = []
    for s in sentences:
        ids, starts, labels = [encoder.eos], [], []
        for pieces, tag in zip(encoder.pieces(s.words), s.tags, strict=True):
            if len(ids) + len(pieces) > max_length:
                # Keep the first piece of a word that does not fit entirely: it alone carries the label.
                if len(ids) < max_length:
                    starts.append(len(ids))
                    labels.append(label2id[tag])
                    ids.append(pieces[0])
                break
            starts.append(len(ids))
            labels.append(label2id[tag])
            ids.extend(pieces)
        out.append(Encoded(ids, starts, labels, len(s.words), s.tags))
    return out


def length_batches(items: Sequence[Encoded], batch_size: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """Index batches of similar length (less padding); batch order shuffled when a generator is given."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    if generator is not None:  # shuffle within length, then chunk, then shuffle the chunks
        noise = torch.rand(len(items), generator=generator).tolist()
        order = sorted(range(len(items)), key=lambda i: (len(items[i].input_ids) // 8, noise[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if generator is not None:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T], right-padded with eos (causal: padding never reaches real tokens)
    starts: torch.Tensor  # [B, W] first-subword positions (0 where padded)
    mask: torch.Tensor  # [B, W] bool: a real word
    labels: torch.Tensor  # [B, W] label ids (0 where padded)

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.starts, self.mask, self.labels)))


def collate(items: Sequence[Encoded], pad_id: int) -> Batch:
    T = max(len(x.input_ids) for x in items)
    W = max(1, max(len(x.starts) for x in items))
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    starts = torch.zeros((len(items), W), dtype=torch.long)
    mask = torch.zeros((len(items), W), dtype=torch.bool)
    labels = torch.zeros((len(items), W), dtype=torch.long)
    for b, x in enumerate(items):
        ids[b, :len(x.input_ids)] = torch.tensor(x.input_ids)
        n = len(x.starts)
        if n:
            starts[b, :n] = torch.tensor(x.starts)
            mask[b, :n] = True
            labels[b, :n] = torch.tensor(x.labels)
    return Batch(ids, starts, mask, labels)
