"""The outer AdamW: weight decay on weight matrices only, optional fused kernel."""

from __future__ import annotations

import torch
from torch import nn

from metapretrain.device import use_fused


def param_groups(model: nn.Module, extra: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Two groups: matrices (decayed) and everything else (norm gains, embeddings; not decayed).

    The input embedding is a lookup table, not a projection: decaying it shrinks
    rare tokens' rows toward zero, so it joins the no-decay group (nanoGPT and
    OLMo do the same). `extra` are parameters owned by step kinds (episode heads).
    """
    decay, no_decay, seen = [], [], set()
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for p in [*model.parameters(), *extra]:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, extra: list[nn.Parameter], train, device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(model, extra, train.weight_decay)
    params = [p for g in groups for p in g["params"]]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps,
                             fused=use_fused(train.fused_adamw, device, params) or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
