"""Batches over the token memmap: a seeded, resumable order of fixed windows.

The training split is cut into windows of `seq_len + 1` tokens starting every
`seq_len` tokens (consecutive windows share one token, so every token is a
target exactly once per epoch). Each epoch visits the windows in a
permutation seeded by (seed, epoch); the position (epoch, index) is the whole
state, so a resumed run draws exactly the batches the uninterrupted run would.

Distributed (`rank`, `world`): `batch_size` stays the global batch; every
rank walks the same global order and keeps rows rank, rank + world, ... of
each global batch, so the ranks read disjoint windows that together are the
single-process batch, and the (global) position restores every rank.
"""

from __future__ import annotations

import numpy as np
import torch


class DataTooSmallError(ValueError):
    """A split holds fewer tokens than one sequence."""


def num_windows(n_tokens: int, seq_len: int) -> int:
    return max(0, (n_tokens - 1) // seq_len)


class TokenBatches:
    """`next() -> LongTensor[batch_size // world, seq_len + 1]` (CPU), in a deterministic shuffled order."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, name: str = "train",
                 rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"train.batch_size={batch_size} (the global batch) is not divisible by the world size "
                             f"{world}")
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed
        self.rank, self.world = rank, world
        self.n = num_windows(len(tokens), seq_len)
        if self.n == 0:
            raise DataTooSmallError(f"the {name} split has {len(tokens)} tokens, fewer than one sequence of "
                                    f"train.seq_len + 1 = {seq_len + 1}; use more text or a shorter seq_len")
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def _window(self, w: int) -> np.ndarray:
        start = int(w) * self.seq_len
        return np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64)

    def next(self) -> torch.Tensor:
        rows = []
        for i in range(self.batch_size):
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            if i % self.world == self.rank:
                rows.append(self._window(self._order[self.index]))
            self.index += 1
        return torch.from_numpy(np.stack(rows))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "windows": self.n,
                "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        mine = (self.seed, self.n, self.batch_size, self.seq_len)
        theirs = (state["seed"], state["windows"], state["batch_size"], state["seq_len"])
        if mine != theirs:
            raise ValueError(f"the checkpoint's data order (seed, windows, batch_size, seq_len) = {theirs} does not "
                             f"match this run's {mine}: the data or config changed since it was written")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)


def fixed_batches(tokens: np.ndarray, batch_size: int, seq_len: int, n_batches: int) -> list[torch.Tensor]:
    """`n_batches` validation batches of evenly spaced windows: the same set at every evaluation.

    When the split holds fewer windows than requested, windows repeat (the
    estimate is then over the whole split, weighted evenly).
    """
    n = num_windows(len(tokens), seq_len)
    if n == 0:
        raise DataTooSmallError(f"the val split has {len(tokens)} tokens, fewer than one sequence of "
                                f"train.seq_len + 1 = {seq_len + 1}")
    want = batch_size * n_batches
    picks = np.linspace(0, n - 1, num=want).round().astype(np.int64) if want <= n else np.arange(want) % n
    rows = [np.asarray(tokens[w * seq_len:w * seq_len + seq_len + 1], dtype=np.int64) for w in picks]
    return [torch.from_numpy(np.stack(rows[i * batch_size:(i + 1) * batch_size])) for i in range(n_batches)]


def domain_batches(tokens: np.ndarray, batch_size: int, seq_len: int, n_batches: int) -> list[torch.Tensor]:
    """At most `n_batches` batches of evenly spaced windows of one evaluation domain's shard, the same set
    at every evaluation, without repeats: a domain with fewer than `batch_size * n_batches` windows gives
    all of them (the last batch may be smaller), and one shorter than a window gives one row of all its
    tokens. Empty for an empty shard or `n_batches` 0."""
    n = num_windows(len(tokens), seq_len)
    if n_batches <= 0 or len(tokens) < 2:
        return []
    if n == 0:
        return [torch.from_numpy(np.asarray(tokens, dtype=np.int64)[None, :])]
    want = min(batch_size * n_batches, n)
    picks = np.linspace(0, n - 1, num=want).round().astype(np.int64)
    rows = [np.asarray(tokens[w * seq_len:w * seq_len + seq_len + 1], dtype=np.int64) for w in picks]
    return [torch.from_numpy(np.stack(rows[i:i + batch_size])) for i in range(0, want, batch_size)]
