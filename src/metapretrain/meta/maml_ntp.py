"""The proposal's MAML variant (the proposal behind the paper): a next-token inner loop, a first-order outer update.

One meta step:
1. inner loop: `meta.inner.steps` steps of next-token cross-entropy, each on a
   fresh support batch of `support_batch_size` windows of the training shard,
   with its own optimiser (`inner_optimizer`, `inner_lr`, `inner_schedule`;
   state fresh every meta step), on fast weights over `scope`:
   `all` parameters, the `last_layers` (last `inner_layers` blocks + final
   norm + LM head), or the LM `head` only; the stored weights are never written;
2. outer: next-token loss of `query_batch_size` fresh windows at the adapted
   weights, back-propagated first-order (the gradient at the adapted weights
   is applied to the initial ones; parameters outside the scope get their
   ordinary gradient).
Windows are drawn uniformly from the shard with `gen`, so the step is a pure
function of `gen`. The inner AdamW has no weight decay: a handful of steps
from the current weights is too short for decay to matter.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from metapretrain.meta import flops
from metapretrain.meta.fast import call_at
from metapretrain.meta.fomaml import first_order
from metapretrain.meta.registry import register_learner
from metapretrain.model.flops import forward_flops_per_token
from metapretrain.train.runtime import to_device
from metapretrain.train.steps import StepContext, StepCost, StepKind, StepOutput


def adapted_names(model: torch.nn.Module, scope: str, inner_layers: int) -> list[str]:
    """Names of the parameters the inner loop adapts for `meta.maml_ntp.scope`."""
    names = [n for n, _ in model.named_parameters()]
    if scope == "all":
        return names
    if scope == "head":
        return [n for n in names if n.startswith("lm_head.")]
    n_layers = model.cfg.n_layers
    if inner_layers > n_layers:
        raise ValueError(f"meta.maml_ntp.inner_layers={inner_layers} exceeds model.n_layers={n_layers}")
    prefixes = tuple(f"layers.{i}." for i in range(n_layers - inner_layers, n_layers)) + ("norm.", "lm_head.")
    return [n for n in names if n.startswith(prefixes)]


class InnerOptimizer:
    """Functional SGD or AdamW (no weight decay) with a per-inner-step schedule."""

    def __init__(self, kind: str, lr: float, schedule: str, steps: int, betas: tuple[float, float], eps: float):
        self.kind, self.lr, self.schedule, self.steps = kind, lr, schedule, steps
        self.betas, self.eps = betas, eps
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def lr_at(self, t: int) -> float:
        frac = t / self.steps
        if self.schedule == "linear":
            return self.lr * (1.0 - frac)
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.lr

    def step(self, params: dict[str, torch.Tensor], grads: list[torch.Tensor], t: int) -> dict[str, torch.Tensor]:
        lr = self.lr_at(t)
        out = {}
        for (n, w), g in zip(params.items(), grads, strict=True):
            w, g = w.detach(), g.detach().to(w.dtype)
            if self.kind == "sgd":
                out[n] = w - lr * g
                continue
            b1, b2 = self.betas
            self.m[n] = b1 * self.m.get(n, torch.zeros_like(w)) + (1 - b1) * g
            self.v[n] = b2 * self.v.get(n, torch.zeros_like(w)) + (1 - b2) * g * g
            m_hat = self.m[n] / (1 - b1 ** (t + 1))
            v_hat = self.v[n] / (1 - b2 ** (t + 1))
            out[n] = w - lr * m_hat / (v_hat.sqrt() + self.eps)
        return out


@register_learner("maml_ntp")
class MAMLNextToken(StepKind):
    # Support and query windows come from the training tokens, drawn per process; the inner loop runs the
    # whole model at full-size fast weights (functional_call), which FSDP's shards cannot serve.
    needs = ("data",)
    samples_per_rank = True

    def __init__(self, ctx: StepContext) -> None:
        super().__init__(ctx)
        self.cfg = ctx.cfg.meta.maml_ntp
        self.steps = ctx.cfg.meta.inner.steps
        self.seq_len = ctx.cfg.train.seq_len
        self.shard = ctx.data.tokens
        if len(self.shard) <= self.seq_len + 1:
            raise ValueError(f"training shard has {len(self.shard)} tokens; train.seq_len={self.seq_len} needs more")
        self.model = ctx.raw_model
        self.adapted = adapted_names(self.model, self.cfg.scope, self.cfg.inner_layers)

    def windows(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n random windows of seq_len + 1 tokens from the shard, [n, T+1] int64 on the device."""
        starts = torch.randint(len(self.shard) - self.seq_len, (n,), generator=gen).numpy()
        rows = np.asarray(self.shard[starts[:, None] + np.arange(self.seq_len + 1)], dtype=np.int64)
        return to_device(torch.from_numpy(rows), self.ctx.device)

    def loss_at(self, params: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        # The fused head + loss (model.loss), first-order like the rest of this inner loop.
        with self.ctx.autocast():
            return call_at(self.model, params, batch[:, :-1], output="loss", targets=batch[:, 1:])

    def run(self, scale: float, gen: torch.Generator) -> StepOutput:
        train = self.ctx.cfg.train
        opt = InnerOptimizer(self.cfg.inner_optimizer, self.cfg.inner_lr, self.cfg.inner_schedule, self.steps,
                             (train.beta1, train.beta2), train.eps)
        params = dict(self.model.named_parameters())
        frozen = {n: p.detach() for n, p in params.items() if n not in self.adapted}
        fast = {n: params[n].detach() for n in self.adapted}
        norms, first_batch, loss_before = [], None, 0.0
        for t in range(self.steps):
            batch = self.windows(self.cfg.support_batch_size, gen)
            leaves = {n: w.detach().requires_grad_() for n, w in fast.items()}
            loss = self.loss_at({**frozen, **leaves}, batch)
            grads = torch.autograd.grad(loss, list(leaves.values()))
            norms.append(torch.sqrt(sum(g.float().pow(2).sum() for g in grads)))
            if t == 0:
                first_batch, loss_before = batch, loss.item()
            fast = opt.step(leaves, grads, t)
        with torch.no_grad():
            loss_after = float(self.loss_at({**frozen, **fast}, first_batch))

        query = self.windows(self.cfg.query_batch_size, gen)
        outer = {**params, **first_order({n: params[n] for n in self.adapted}, fast)}
        loss = self.loss_at(outer, query)
        (loss * scale).backward()

        metrics = {"meta/support_loss_before": loss_before, "meta/support_loss_after": loss_after,
                   "meta/query_loss": loss.item(), "meta/inner_grad_norm": float(torch.stack(norms).mean())}
        cost = self.expected_cost(self.ctx.cfg, self.model.cfg)
        return StepOutput(loss=loss.item(), tokens=cost.tokens, flops=cost.flops, metrics=metrics)

    @classmethod
    def expected_cost(cls, cfg, model_cfg) -> StepCost:
        # Every batch size is fixed by the config, so a step always costs this (`run` reports it too).
        ntp, steps, T = cfg.meta.maml_ntp, cfg.meta.inner.steps, cfg.train.seq_len
        s_tok, q_tok = ntp.support_batch_size * T, ntp.query_batch_size * T
        fwd = forward_flops_per_token(model_cfg, T)
        inner = steps * s_tok * (fwd + 2.0 * cls._backward_span(ntp, model_cfg, T)) + s_tok * fwd
        return StepCost(tokens=(steps + 1) * s_tok + q_tok, flops=inner + q_tok * 3.0 * fwd)

    @staticmethod
    def _backward_span(ntp, model_cfg, T: int) -> float:
        """Forward FLOPs per token of the part of the network an inner backward traverses."""
        if ntp.scope == "all":
            return forward_flops_per_token(model_cfg, T)
        if ntp.scope == "head":
            return flops.lm_head_forward(model_cfg)
        return flops.suffix_forward(model_cfg, T, ntp.inner_layers, lm_head=True)
