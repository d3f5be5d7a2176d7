"""Second-order MAML with a head-only inner loop, to measure what FOMAML's approximation drops.

The inner loop differentiates through its own SGD steps (create_graph), and
the support features keep their graph, so the query loss's gradient is the
exact meta-gradient of L_q(θ, φ_T(θ, φ_0)) w.r.t. the backbone θ and the
initial head φ_0. For one inner step it differs from FOMAML's head gradient
by −α · H_support(φ_0) · ∇L_q(φ_1). The stored head is never written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metapretrain.meta.episode_learner import EpisodicLearner
from metapretrain.meta.registry import register_learner
from metapretrain.train.steps import StepCost, StepOutput

# A second-order inner step costs its forward + backward (3 forward-equivalents)
# plus differentiating that backward in the outer pass (about 2 × 3 more).
SECOND_ORDER_STEP_COST = 9.0


@register_learner("maml2")
class MAML2(EpisodicLearner):
    def run(self, scale: float, gen: torch.Generator) -> StepOutput:
        ep, sy, qy = self.start_episode(gen)
        feats = self.features(ep.support)  # keeps its graph: φ_T depends on θ through it
        phi0 = self.head_params()
        fast = dict(phi0)
        norms = []
        for _ in range(self.meta.inner.steps):
            support_loss = F.cross_entropy(self.head(feats, fast, gen), sy)
            grads = torch.autograd.grad(support_loss, list(fast.values()), create_graph=True)
            norms.append(torch.sqrt(sum(g.detach().pow(2).sum() for g in grads)))
            fast = {n: w - self.meta.inner.lr * g for (n, w), g in zip(fast.items(), grads, strict=True)}

        logits = self.head(self.features(ep.query), fast, gen)
        loss = F.cross_entropy(logits, qy)
        (loss * scale).backward()

        metrics = self.support_metrics(feats, sy, phi0, {n: w.detach() for n, w in fast.items()})
        metrics.update(self.query_metrics(loss, logits, qy))
        metrics["meta/inner_grad_norm"] = float(torch.stack(norms).mean())
        cost = self.step_cost(self.meta, self.backbone.cfg, len(sy), len(qy))
        return StepOutput(loss=loss.item(), tokens=cost.tokens, flops=cost.flops, metrics=metrics)

    @classmethod
    def step_cost(cls, meta, model_cfg, n_s: int, n_q: int) -> StepCost:
        flops = cls.episode_flops(meta, model_cfg, n_s, n_q, support_backward=True, query_backward=True,
                                  head_inner=SECOND_ORDER_STEP_COST * meta.inner.steps * n_s,
                                  head_extra=2.0 * n_s + 3.0 * n_q)
        return StepCost(tokens=(n_s + n_q) * meta.episode.window, flops=flops)
