"""Reptile (Nichol et al. 2018) on SMLMT episodes.

The inner loop is `meta.inner.steps` SGD steps (lr `meta.inner.lr`) on the
support loss, at fast weights (the stored parameters are never written),
over `meta.reptile.scope`: the episode head only (backbone features computed
once), or the whole backbone plus head. The meta-gradient written into .grad
is (θ − θ_adapted) · outer_step_size · scale, so an outer SGD step of lr 1
moves θ toward θ_adapted by outer_step_size (the loop's AdamW rescales it,
as usual for Reptile with Adam). With scope head the backbone gets no gradient
from Reptile steps. The query set is only evaluated (after adaptation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metapretrain.meta.episode_learner import EpisodicLearner, accuracy
from metapretrain.meta.fast import LastHidden, accumulate_grad, call_at
from metapretrain.meta.registry import register_learner
from metapretrain.train.steps import StepCost, StepOutput


@register_learner("reptile")
class Reptile(EpisodicLearner):
    supports_fsdp = False  # it evaluates the backbone at full-size fast weights and writes full-size .grad

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.last_hidden = LastHidden(self.backbone)
        # The LM head is unused by episode features, so it is not adapted.
        self.backbone_params = {f"decoder.{n}": p for n, p in self.backbone.named_parameters()
                                if not n.startswith("lm_head.")}

    def run(self, scale: float, gen: torch.Generator) -> StepOutput:
        ep, sy, qy = self.start_episode(gen)
        if self.meta.reptile.scope == "head":
            out = self._head_scope(ep, sy, qy, gen)
        else:
            out = self._all_scope(ep, sy, qy, gen)
        delta, metrics, query_logits = out
        accumulate_grad({**self.backbone_params, **self.head_params()}, delta,
                        self.meta.reptile.outer_step_size * scale)
        loss = F.cross_entropy(query_logits, qy)
        metrics.update(self.query_metrics(loss, query_logits, qy))
        cost = self.step_cost(self.meta, self.backbone.cfg, len(sy), len(qy))
        return StepOutput(loss=loss.item(), tokens=cost.tokens, flops=cost.flops, metrics=metrics)

    @classmethod
    def step_cost(cls, meta, model_cfg, n_s: int, n_q: int) -> StepCost:
        W, steps = meta.episode.window, meta.inner.steps
        if meta.reptile.scope == "head":
            # Features once (no backward), inner steps on the head, then the after-metrics and the query logits.
            flops = cls.episode_flops(meta, model_cfg, n_s, n_q, support_backward=False, query_backward=False,
                                      head_inner=3.0 * steps * n_s, head_extra=2.0 * n_s + n_q)
            return StepCost(tokens=(n_s + n_q) * W, flops=flops)
        # Inner steps: fwd+bwd of backbone and head on the support; then one forward each for the after-metrics and query.
        flops = (steps - 1) * cls.episode_flops(meta, model_cfg, n_s, 0, support_backward=True, query_backward=False,
                                                head_inner=0.0, head_extra=0.0)
        flops += cls.episode_flops(meta, model_cfg, n_s, n_q, support_backward=True, query_backward=False,
                                   head_inner=3.0 * steps * n_s, head_extra=n_s + n_q)
        flops += cls.episode_flops(meta, model_cfg, n_s, 0, support_backward=False, query_backward=False,
                                   head_inner=0.0, head_extra=0.0)
        return StepCost(tokens=((steps + 1) * n_s + n_q) * W, flops=flops)

    def _head_scope(self, ep, sy, qy, gen):
        with torch.no_grad():
            feats, qfeats = self.features(ep.support), self.features(ep.query)
        phi0 = self.head_params()
        fast, metrics = self.inner_loop(feats, sy, gen)
        metrics.update(self.support_metrics(feats, sy, phi0, fast))
        with torch.no_grad():
            query_logits = self._eval_head(qfeats, fast)
        delta = {n: p.detach() - fast[n] for n, p in phi0.items()}
        return delta, metrics, query_logits

    def _all_scope(self, ep, sy, qy, gen):
        sx, qx = ep.support.to(self.ctx.device), ep.query.to(self.ctx.device)
        theta0 = {n: p.detach() for n, p in {**self.backbone_params, **self.head_params()}.items()}
        fast = dict(theta0)
        head_names = [n for n, _ in self.head.named_parameters()]
        norms, metrics = [], {}
        for t in range(self.meta.inner.steps):
            leaves = {n: w.detach().requires_grad_() for n, w in fast.items()}
            with self.ctx.autocast():
                feats = call_at(self.last_hidden, self._backbone_part(leaves), sx).float()
            logits = self.head(feats, {n: leaves[n] for n in head_names}, gen)
            loss = F.cross_entropy(logits, sy)
            if t == 0:
                metrics.update({"meta/support_loss_before": loss.item(), "meta/support_acc_before": accuracy(logits, sy)})
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g for w, g in zip(leaves.values(), grads, strict=True)]
            norms.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
            fast = {n: (w - self.meta.inner.lr * g).detach() for (n, w), g in zip(leaves.items(), grads, strict=True)}
        with torch.no_grad(), self.ctx.autocast():
            s_after = self._eval_head(call_at(self.last_hidden, self._backbone_part(fast), sx).float(), fast)
            query_logits = self._eval_head(call_at(self.last_hidden, self._backbone_part(fast), qx).float(), fast)
        metrics.update({"meta/support_loss_after": float(F.cross_entropy(s_after, sy)),
                        "meta/support_acc_after": accuracy(s_after, sy),
                        "meta/inner_grad_norm": float(torch.stack(norms).mean())})
        delta = {n: theta0[n] - fast[n] for n in theta0}
        return delta, metrics, query_logits

    def _backbone_part(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: params[n] for n in self.backbone_params}

    def _eval_head(self, feats: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        was = self.head.training
        self.head.eval()
        logits = self.head(feats, {n: params[n] for n, _ in self.head.named_parameters()})
        self.head.train(was)
        return logits
