"""First-order MAML with a head-only inner loop on SMLMT episodes (the paper's method).

One meta step:
1. sample an episode (a pure function of `gen`);
2. support features from the backbone, computed ONCE: the inner loop only
   moves the head, so the features cannot change between inner steps (the
   paper's code re-ran the backbone on every inner step);
3. `meta.inner.steps` SGD steps on the head, functionally (fast weights): the
   stored head is never written;
4. query loss at the adapted head φ_T, back-propagated into the backbone and,
   first-order, into the initial head φ_0: the adapted weights enter the graph
   as φ_0 + stop_grad(φ_T − φ_0), whose value is φ_T and whose gradient
   w.r.t. φ_0 is the identity.

`meta.inner.backbone_grad_from_support: true` reproduces the paper code,
where every inner step's support-loss gradient also reached the backbone
(scaled like the outer loss); by default the backbone gets only the query
gradient, as the paper's text describes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metapretrain.meta.episode_learner import EpisodicLearner
from metapretrain.meta.registry import register_learner
from metapretrain.train.steps import StepCost, StepOutput


def first_order(initial: dict[str, torch.Tensor], adapted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors valued `adapted` whose gradient flows unchanged into `initial`."""
    return {n: p + (adapted[n] - p).detach() for n, p in initial.items()}


@register_learner("fomaml")
class FOMAML(EpisodicLearner):
    def run(self, scale: float, gen: torch.Generator) -> StepOutput:
        ep, sy, qy = self.start_episode(gen)
        from_support = self.meta.inner.backbone_grad_from_support

        if from_support:
            support_graph = self.features(ep.support)
            feats = support_graph.detach()
            feature_grad = torch.zeros_like(feats)
        else:
            with torch.no_grad():
                feats = self.features(ep.support)
            feature_grad = None
        phi0 = self.head_params()
        fast, metrics = self.inner_loop(feats, sy, gen, feature_grad)
        if from_support:
            # The paper code's fabric.backward(support_loss) per inner step, in one backbone backward.
            support_graph.backward(feature_grad * scale)

        logits = self.head(self.features(ep.query), first_order(phi0, fast), gen)
        loss = F.cross_entropy(logits, qy)
        (loss * scale).backward()

        metrics.update(self.support_metrics(feats, sy, phi0, fast))
        metrics.update(self.query_metrics(loss, logits, qy))
        cost = self.step_cost(self.meta, self.backbone.cfg, len(sy), len(qy))
        return StepOutput(loss=loss.item(), tokens=cost.tokens, flops=cost.flops, metrics=metrics)

    @classmethod
    def step_cost(cls, meta, model_cfg, n_s: int, n_q: int) -> StepCost:
        # Support features once (forward only unless they pass support gradients on), query forward + backward;
        # each inner step is a head forward + backward per support example, plus the before/after metrics.
        flops = cls.episode_flops(meta, model_cfg, n_s, n_q, support_backward=meta.inner.backbone_grad_from_support,
                                  query_backward=True, head_inner=3.0 * meta.inner.steps * n_s,
                                  head_extra=2.0 * n_s + 3.0 * n_q)
        return StepCost(tokens=(n_s + n_q) * meta.episode.window, flops=flops)
