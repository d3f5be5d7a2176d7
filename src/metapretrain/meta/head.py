"""The episode classifier head: an MLP from the backbone's hidden state to N-way logits.

Its forward takes optional explicit parameters, so inner loops run on fast
weights without ever writing into the stored ones, and dropout masks drawn
from a caller's generator, so an episode step is a pure function of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EpisodeHead(nn.Module):
    """`layers` Linear layers (d_model → width → … → n_way), ReLU + dropout between, Xavier init.

    `output_init="zero"` zeroes the output layer instead (Xavier elsewhere). Episode labels
    are a fresh random permutation of the classes every episode, so a random output layer
    only adds a per-episode bias the inner loop must undo; the paper's head is all-Xavier.
    """

    def __init__(self, d_in: int, n_way: int, layers: int, width: int, dropout: float,
                 output_init: str = "xavier") -> None:
        super().__init__()
        if output_init not in ("xavier", "zero"):
            raise ValueError(f"episode head output_init must be 'xavier' or 'zero', not {output_init!r}")
        dims = [d_in] + [width] * (layers - 1) + [n_way]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.dropout = dropout
        for lin in self.linears:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        if output_init == "zero":
            nn.init.zeros_(self.linears[-1].weight)

    def forward(self, h: torch.Tensor, params: dict[str, torch.Tensor] | None = None,
                gen: torch.Generator | None = None) -> torch.Tensor:
        """Logits [B, n_way] from features [B, d_in] at `params` (default: the stored weights)."""
        if params is None:
            params = dict(self.named_parameters())
        x = h
        last = len(self.linears) - 1
        for i in range(len(self.linears)):
            x = F.linear(x, params[f"linears.{i}.weight"], params[f"linears.{i}.bias"])
            if i < last:
                x = F.relu(x)
                if self.training and self.dropout > 0:
                    x = self._dropout(x, gen)
        return x

    def _dropout(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if gen is None:
            return F.dropout(x, self.dropout, training=True)
        keep = torch.rand(x.shape, generator=gen, device=gen.device) >= self.dropout
        return x * keep.to(x.device, x.dtype) / (1.0 - self.dropout)

    def matmul_params(self) -> int:
        return sum(lin.weight.numel() for lin in self.linears)

    @staticmethod
    def shape_params(d_in: int, n_way: int, layers: int, width: int) -> tuple[int, int]:
        """(matmul parameters, all parameters) of a head of this shape, without building it."""
        dims = [d_in] + [width] * (layers - 1) + [n_way]
        weights = sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
        return weights, weights + sum(dims[1:])

    def weight_norm(self) -> float:
        return float(torch.sqrt(sum(p.detach().float().pow(2).sum() for p in self.parameters())))
