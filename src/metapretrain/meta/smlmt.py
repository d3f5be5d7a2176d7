"""SMLMT episodes (subset-masked language-modelling tasks, Bansal et al. 2020).

An N-way k-shot episode picks N class tokens (or whole words), takes k
support and q query occurrences of each from the training shard, masks
them with `[MASK]` and labels each example with its class index 0..N-1.

Causal decoder choice: an example is the `window` tokens *ending at* the
occurrence, so the masked class token is the LAST position. The head reads
the final hidden state there, which sees the left context plus `[MASK]`;
right context is invisible to a causal decoder and is not included.
Earlier occurrences of the same class inside the window are masked too, so
the answer is never copied from context. A window may reach back across an
end-of-document token, exactly as packed next-token batches do.

The class index is built once, over the whole shard when it holds at most
`index_tokens` tokens, else over `index_tokens` tokens in evenly spaced spans
of about a million tokens each (a paper-scale shard has billions of tokens,
and the index costs tens of bytes per token). An occurrence is samplable when
its full left window lies inside its span, so every earlier occurrence in a
window is indexed and masked. A class is eligible when it has at least
max(min_count, k + q) samplable occurrences and its frequency is at most
max_frequency of the indexed tokens (stop words out); special tokens are
never classes.
Because ineligible classes are excluded up front, every draw is fillable:
no episode is ever padded or resampled.

Word unit: a word is a maximal run of byte-level BPE pieces made of
letters (ASCII letters or any non-ASCII byte) whose first piece starts
with a space ('Ġ') or follows a non-word piece, and whose other pieces do
not. All its pieces are masked; the prediction is made at the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metapretrain.meta.registry import register_episode_builder

MAX_WORD_PIECES = 8  # longer words are not used as classes


@dataclass
class Episode:
    """One N-way episode. Examples are class-major: class c owns rows c*k..c*k+k-1 of the support."""

    support: torch.Tensor  # [N*k, W] int64, masked windows
    support_labels: torch.Tensor  # [N*k] int64 in 0..N-1
    query: torch.Tensor  # [N*q, W]
    query_labels: torch.Tensor  # [N*q]
    classes: list[tuple[int, ...]]  # class c's token ids (one id for unit=token)
    support_ends: np.ndarray  # [N*k] shard position of each example's last (predicted) token
    query_ends: np.ndarray  # [N*q]

    @property
    def n_way(self) -> int:
        return len(self.classes)

    @property
    def tokens(self) -> int:
        return self.support.numel() + self.query.numel()


class ClassIndex:
    """Occurrences of every eligible class, grouped by class (CSR layout).

    `keys[c]` are class c's token ids; `ends[offsets[c]:offsets[c+1]]` are the
    sorted shard positions of the last token of each of its occurrences (all
    of them: they are masked when inside a window). The ones with a full left
    window inside their indexed span, which examples are drawn from, are
    `full_ends[full_offsets[c]:full_offsets[c+1]]`.
    """

    def __init__(self, keys: list[tuple[int, ...]], offsets: np.ndarray, ends: np.ndarray,
                 full_offsets: np.ndarray, full_ends: np.ndarray, n_indexed: int) -> None:
        self.keys, self.offsets, self.ends = keys, offsets, ends
        self.full_offsets, self.full_ends = full_offsets, full_ends
        self.n_indexed = n_indexed  # shard tokens the index covers

    def __len__(self) -> int:
        return len(self.keys)

    def occurrences(self, c: int) -> np.ndarray:
        """All indexed occurrences of class c (sorted end positions)."""
        return self.ends[self.offsets[c]:self.offsets[c + 1]]

    def samplable(self, c: int) -> np.ndarray:
        """Occurrences of class c with a full left window inside their span."""
        return self.full_ends[self.full_offsets[c]:self.full_offsets[c + 1]]

    @classmethod
    def build(cls, class_of: np.ndarray, ends: np.ndarray, full: np.ndarray, keys: list[tuple[int, ...]],
              n_indexed: int, ep, exclude: list[int]) -> ClassIndex:
        """Group occurrences (class id, end position ascending, full left window or not) of the eligible classes."""
        counts = np.bincount(class_of[full], minlength=len(keys))
        eligible = (counts >= max(ep.min_count, ep.k_shot + ep.q_query)) & (counts <= ep.max_frequency * n_indexed)
        eligible[[i for i in exclude if 0 <= i < len(eligible)]] = False
        keep = eligible[class_of]
        class_of, ends, full = class_of[keep], ends[keep], full[keep]
        order = np.argsort(class_of, kind="stable")  # stable: ends stay sorted within a class
        ids = np.flatnonzero(eligible)
        all_counts = np.bincount(class_of, minlength=len(keys))[ids]
        offsets = np.concatenate([[0], np.cumsum(all_counts)]).astype(np.int64)
        ends, full = ends[order].astype(np.int64, copy=False), full[order]
        full_offsets = np.concatenate([[0], np.cumsum(counts[ids])]).astype(np.int64)
        return cls([keys[i] for i in ids], offsets, ends, full_offsets, ends[full], n_indexed)


# Tokens per span when the index covers a sample of the shard: long enough that only a
# window's worth at each span's start (0.01% at window 128) lacks a full left window.
SPAN_TOKENS = 1 << 20


def index_spans(n_shard: int, index_tokens: int) -> list[tuple[int, int]]:
    """The [start, stop) shard ranges the class index covers: the whole shard when it holds at
    most `index_tokens` tokens, else `index_tokens` tokens in evenly spaced, disjoint spans."""
    if n_shard <= index_tokens:
        return [(0, n_shard)]
    k = max(1, index_tokens // SPAN_TOKENS)
    length = index_tokens // k
    if k == 1:
        return [(0, length)]
    # Consecutive starts are (n - length) / (k - 1) >= length apart (n > k * length): no overlap.
    return [(i * (n_shard - length) // (k - 1), i * (n_shard - length) // (k - 1) + length) for i in range(k)]


class _Indexed:
    """The indexed tokens of a shard, concatenated: ids, absolute positions and span offsets."""

    def __init__(self, shard: np.ndarray, index_tokens: int, dtype=None) -> None:
        spans = index_spans(len(shard), index_tokens)
        if len(spans) == 1:  # a view of the shard, no copy
            a, b = spans[0]
            self.ids = np.asarray(shard[a:b], dtype=dtype)
        else:
            self.ids = np.concatenate([np.asarray(shard[a:b], dtype=dtype) for a, b in spans])
        self.lengths = np.asarray([b - a for a, b in spans], dtype=np.int64)
        self.local_starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.shift = np.asarray([a for a, _ in spans], dtype=np.int64) - self.local_starts

    def __len__(self) -> int:
        return len(self.ids)

    def locate(self, local: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        """Absolute shard positions of concatenated positions, and whether each has `window - 1`
        tokens of left context inside its own span."""
        span = np.searchsorted(self.local_starts, local, side="right") - 1
        return local + self.shift[span], local - self.local_starts[span] >= window - 1

    def span_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Masks of the first and the last concatenated position of every span."""
        first = np.zeros(len(self.ids), dtype=bool)
        last = np.zeros(len(self.ids), dtype=bool)
        first[self.local_starts] = True
        last[self.local_starts + self.lengths - 1] = True
        return first, last


def token_index(shard: np.ndarray, ep, special_ids: list[int]) -> ClassIndex:
    """Class = one vocabulary id; occurrences need `window - 1` tokens of left context."""
    # Kept in the shard's unsigned dtype where it has one: less memory, radix-sorted.
    indexed = _Indexed(shard, ep.index_tokens, None if np.asarray(shard[:1]).dtype.kind == "u" else np.int64)
    class_of = indexed.ids
    ends, full = indexed.locate(np.arange(len(indexed), dtype=np.int64), ep.window)
    keys = [(i,) for i in range(int(class_of.max()) + 1)]
    return ClassIndex.build(class_of, ends, full, keys, len(indexed), ep, special_ids)


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes map to themselves, the rest to 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def piece_classes(tokenizer_path: str, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per vocabulary id: (is a word piece, starts with a space). Special tokens are neither."""
    from metapretrain.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    char_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    wordy = np.zeros(vocab_size, dtype=bool)
    spaced = np.zeros(vocab_size, dtype=bool)
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    for piece, i in tok.get_vocab().items():
        if i >= vocab_size or piece in specials or any(c not in char_to_byte for c in piece):
            continue
        raw = bytes(char_to_byte[c] for c in piece)
        lead = raw[:1] == b" "
        body = raw[1:] if lead else raw
        # Non-ASCII bytes are parts of UTF-8 letters (č, ø, 中): count them as word characters.
        if body and all(b >= 0x80 or chr(b).isalpha() for b in body):
            wordy[i], spaced[i] = True, lead
    return wordy, spaced


def word_index(shard: np.ndarray, ep, tokenizer_path: str) -> ClassIndex:
    """Class = a whole word (a tuple of piece ids); the occurrence ends at its last piece.

    Words do not cross the edge of an indexed span (the piece before a span is unknown here).
    """
    indexed = _Indexed(shard, ep.index_tokens, np.int64)
    ids = indexed.ids
    wordy_v, spaced_v = piece_classes(tokenizer_path, int(ids.max()) + 1)
    wordy, spaced = wordy_v[ids], spaced_v[ids]
    span_first, span_last = indexed.span_edges()
    prev_wordy = np.concatenate([[False], wordy[:-1]]) & ~span_first
    cont = wordy & ~spaced & prev_wordy
    starts = np.flatnonzero(wordy & ~cont)
    next_cont = np.concatenate([cont[1:], [False]]) & ~span_last
    ends = np.flatnonzero(wordy & ~next_cont)  # one end per start, in the same order
    lengths = ends - starts + 1
    keep = lengths <= min(MAX_WORD_PIECES, ep.window - 1)
    starts, ends, lengths = starts[keep], ends[keep], lengths[keep]
    # Rows of piece ids padded with -1; np.unique over rows names each distinct word.
    pieces = np.full((len(starts), int(lengths.max(initial=1))), -1, dtype=np.int64)
    for j in range(pieces.shape[1]):
        has = lengths > j
        pieces[has, j] = ids[starts[has] + j]
    # Distinct words: lexicographic sort of the rows, a new class wherever a row differs from
    # the previous one (np.unique(axis=0) does the same through a much slower void-dtype sort).
    order = np.lexsort(pieces.T[::-1])
    rows = pieces[order]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = (rows[1:] != rows[:-1]).any(axis=1)
    class_of = np.empty(len(rows), dtype=np.int64)
    class_of[order] = np.cumsum(new) - 1
    uniq = rows[new]
    keys = [tuple(int(t) for t in row if t >= 0) for row in uniq]
    ends, full = indexed.locate(ends, ep.window)
    return ClassIndex.build(class_of, ends, full, keys, len(indexed), ep, [])


def _sample_distinct(n: int, m: int, gen: torch.Generator) -> np.ndarray:
    """m distinct indices in [0, n), uniformly, as a function of `gen` only."""
    if n <= 8 * m or n <= 4096:
        return torch.randperm(n, generator=gen)[:m].numpy()
    chosen: list[int] = []
    seen: set[int] = set()
    while len(chosen) < m:  # rejection sampling: n >> m, so a round or two suffice
        for i in torch.randint(n, (2 * m,), generator=gen).tolist():
            if i not in seen:
                seen.add(i)
                chosen.append(i)
                if len(chosen) == m:
                    break
    return np.asarray(chosen, dtype=np.int64)


@register_episode_builder("smlmt")
class SMLMTBuilder:
    """Samples N-way k-shot episodes from a token shard; `sample(gen)` is a pure function of `gen`."""

    def __init__(self, shard: np.ndarray, episode_cfg, mask_id: int, eos_id: int | None = None,
                 tokenizer_path: str | None = None) -> None:
        self.shard, self.cfg, self.mask_id = shard, episode_cfg, mask_id
        ep = episode_cfg
        if len(shard) < ep.window:
            raise ValueError(f"training shard has {len(shard)} tokens, fewer than meta.episode.window={ep.window}")
        if ep.unit == "word":
            if not tokenizer_path:
                raise ValueError("meta.episode.unit=word needs the tokenizer (TrainingData.tokenizer_path is None)")
            self.index = word_index(shard, ep, tokenizer_path)
        else:
            self.index = token_index(shard, ep, [i for i in (mask_id, eos_id) if i is not None])
        if len(self.index) < ep.n_way:
            raise ValueError(
                f"only {len(self.index)} {ep.unit} classes occur at least max(meta.episode.min_count={ep.min_count}, "
                f"k_shot+q_query={ep.k_shot + ep.q_query}) times with frequency <= meta.episode.max_frequency="
                f"{ep.max_frequency} in the {self.index.n_indexed} indexed tokens; meta.episode.n_way={ep.n_way} "
                f"needs more (a larger corpus or meta.episode.index_tokens, or looser bounds)"
            )

    def sample(self, gen: torch.Generator) -> Episode:
        ep, W = self.cfg, self.cfg.window
        m = ep.k_shot + ep.q_query
        classes = torch.randperm(len(self.index), generator=gen)[:ep.n_way].tolist()
        ends = np.empty((ep.n_way, m), dtype=np.int64)
        for c, cls in enumerate(classes):
            occ = self.index.samplable(cls)
            ends[c] = occ[_sample_distinct(len(occ), m, gen)]
        windows = np.asarray(self.shard[(ends[..., None] - (W - 1)) + np.arange(W)], dtype=np.int64)  # [N, m, W]
        for c, cls in enumerate(classes):
            self._mask(windows[c], ends[c], cls)
        support, query = windows[:, :ep.k_shot], windows[:, ep.k_shot:]
        labels = np.arange(ep.n_way)
        return Episode(
            support=torch.from_numpy(support.reshape(-1, W).copy()),
            support_labels=torch.from_numpy(np.repeat(labels, ep.k_shot)),
            query=torch.from_numpy(query.reshape(-1, W).copy()),
            query_labels=torch.from_numpy(np.repeat(labels, ep.q_query)),
            classes=[self.index.keys[c] for c in classes],
            support_ends=ends[:, :ep.k_shot].reshape(-1),
            query_ends=ends[:, ep.k_shot:].reshape(-1),
        )

    def _mask(self, windows: np.ndarray, ends: np.ndarray, cls: int) -> None:
        """Mask every occurrence of class `cls` inside each window (the last one ends at column W-1)."""
        W, n_pieces = windows.shape[1], len(self.index.keys[cls])
        occ = self.index.occurrences(cls)
        lo = np.searchsorted(occ, ends - (W - 1))  # occurrences ending inside the window
        hi = np.searchsorted(occ, ends, side="right")
        for row, (a, b, end) in enumerate(zip(lo, hi, ends, strict=True)):
            for e in occ[a:b]:
                col = int(e - end) + W - 1
                windows[row, max(0, col - n_pieces + 1):col + 1] = self.mask_id
