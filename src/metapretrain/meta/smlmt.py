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

The class index is built once over the shard. A class is eligible when it
has at least max(min_count, k + q) occurrences with a full left window and
its frequency is at most max_frequency of the shard (stop words out);
special tokens are never classes.
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
    sorted shard positions of the last token of each of its occurrences. All
    occurrences are kept (they are masked when inside a window); the ones
    with a full left window start at `ends[first_full[c]]`.
    """

    def __init__(self, keys: list[tuple[int, ...]], offsets: np.ndarray, ends: np.ndarray,
                 first_full: np.ndarray) -> None:
        self.keys, self.offsets, self.ends, self.first_full = keys, offsets, ends, first_full

    def __len__(self) -> int:
        return len(self.keys)

    def occurrences(self, c: int) -> np.ndarray:
        """All occurrences of class c (sorted end positions)."""
        return self.ends[self.offsets[c]:self.offsets[c + 1]]

    def samplable(self, c: int) -> np.ndarray:
        """Occurrences of class c with a full left window."""
        return self.ends[self.first_full[c]:self.offsets[c + 1]]

    @classmethod
    def build(cls, class_of: np.ndarray, ends: np.ndarray, keys: list[tuple[int, ...]], window: int,
              n_shard: int, ep, exclude: list[int]) -> ClassIndex:
        """Group occurrences (class id, end position; ends ascending) of the eligible classes."""
        full = ends >= window - 1
        counts = np.bincount(class_of[full], minlength=len(keys))
        eligible = (counts >= max(ep.min_count, ep.k_shot + ep.q_query)) & (counts <= ep.max_frequency * n_shard)
        eligible[[i for i in exclude if 0 <= i < len(eligible)]] = False
        keep = eligible[class_of]
        class_of, ends = class_of[keep], ends[keep]
        order = np.argsort(class_of, kind="stable")  # stable: ends stay sorted within a class
        ids = np.flatnonzero(eligible)
        all_counts = np.bincount(class_of, minlength=len(keys))[ids]
        offsets = np.concatenate([[0], np.cumsum(all_counts)]).astype(np.int64)
        ends = ends[order].astype(np.int64)
        first_full = offsets[:-1] + (all_counts - counts[ids])  # the early occurrences come first
        return cls([keys[i] for i in ids], offsets, ends, first_full)


def token_index(shard: np.ndarray, ep, special_ids: list[int]) -> ClassIndex:
    """Class = one vocabulary id; occurrences need `window - 1` tokens of left context."""
    class_of = np.asarray(shard)  # kept in the shard's unsigned dtype: less memory, radix-sorted
    if class_of.dtype.kind != "u":
        class_of = class_of.astype(np.int64)
    keys = [(i,) for i in range(int(class_of.max()) + 1)]
    return ClassIndex.build(class_of, np.arange(len(shard)), keys, ep.window, len(shard), ep, special_ids)


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
    """Class = a whole word (a tuple of piece ids); the occurrence ends at its last piece."""
    ids = np.asarray(shard, dtype=np.int64)
    wordy_v, spaced_v = piece_classes(tokenizer_path, int(ids.max()) + 1)
    wordy, spaced = wordy_v[ids], spaced_v[ids]
    prev_wordy = np.concatenate([[False], wordy[:-1]])
    cont = wordy & ~spaced & prev_wordy
    starts = np.flatnonzero(wordy & ~cont)
    next_cont = np.concatenate([cont[1:], [False]])
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
    return ClassIndex.build(class_of, ends, keys, ep.window, len(ids), ep, [])


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
                raise ValueError("meta.episode.unit=word needs the tokenizer (StepContext.tokenizer_path is None)")
            self.index = word_index(shard, ep, tokenizer_path)
        else:
            self.index = token_index(shard, ep, [i for i in (mask_id, eos_id) if i is not None])
        if len(self.index) < ep.n_way:
            raise ValueError(
                f"only {len(self.index)} {ep.unit} classes occur at least max(meta.episode.min_count={ep.min_count}, "
                f"k_shot+q_query={ep.k_shot + ep.q_query}) times with frequency <= meta.episode.max_frequency="
                f"{ep.max_frequency}; meta.episode.n_way={ep.n_way} needs more (a larger corpus or looser bounds)"
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
