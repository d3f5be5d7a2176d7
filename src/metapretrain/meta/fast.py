"""Fast weights: running a module at parameters other than its stored ones, and writing meta-gradients."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


class LastHidden(nn.Module):
    """Decoder features at the last position, as a module `functional_call` can run at fast weights."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder.hidden(x)[:, -1]


def call_at(module: nn.Module, params: dict[str, torch.Tensor], *args, **kwargs):
    """module(*args, **kwargs) with `params` (a subset of its named parameters) substituted; the module is
    not modified."""
    return functional_call(module, params, args, kwargs, strict=False)


def accumulate_grad(params: dict[str, nn.Parameter], grads: dict[str, torch.Tensor], scale: float) -> None:
    """p.grad += scale · g for each named parameter (allocating .grad when absent)."""
    for n, g in grads.items():
        p = params[n]
        g = (g * scale).to(p.dtype)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)
