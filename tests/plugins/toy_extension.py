"""A learner and a dynamics metric from outside metapretrain: the worked example of docs/extending.md.

Load it with `METAPRETRAIN_PLUGINS=toy_extension` (this folder on PYTHONPATH); then
`meta.learner: toy_random_window` and `dynamics.metrics: [embedding_row_norm]` are valid.
tests/test_extending.py runs both through a real pretrain and dynamics stage.
"""

from __future__ import annotations

import numpy as np
import torch

from metapretrain.dynamics.registry import Row, register_metric
from metapretrain.meta.registry import register_learner
from metapretrain.model.loss import next_token_loss
from metapretrain.train.steps import StepCost, StepKind, StepOutput, step_kind


@register_learner("toy_random_window")
class RandomWindowStep(StepKind):
    """Next-token loss on windows drawn at random offsets of the training split (not a meta-learner:
    the smallest step kind that samples its own data, which is what a learner's `meta` step does)."""

    needs = ("data",)  # ctx.data.tokens: the training split
    grad_sync = "wrapper"  # the backward runs through ctx.model, so DDP averages it
    supports_fsdp = True  # only the root module's forward is called
    samples_per_rank = True  # each process draws its own windows

    def run(self, scale: float, gen: torch.Generator) -> StepOutput:
        t = self.ctx.cfg.train
        tokens = self.ctx.data.tokens
        starts = torch.randint(0, len(tokens) - t.seq_len - 1, (t.batch_size,), generator=gen).tolist()
        batch = torch.from_numpy(np.stack([tokens[s:s + t.seq_len + 1] for s in starts]).astype(np.int64))
        batch = batch.to(self.ctx.device)
        with self.ctx.autocast():
            loss = next_token_loss(self.ctx.model, batch)
        (loss * scale).backward()
        cost = self.expected_cost(self.ctx.cfg, self.ctx.raw_model.cfg)
        return StepOutput(loss=loss.item(), tokens=cost.tokens, flops=cost.flops,
                          metrics={"mean_start": float(np.mean(starts))})

    @classmethod
    def expected_cost(cls, cfg, model_cfg) -> StepCost:
        return step_kind("next_token").expected_cost(cfg, model_cfg)  # the same shape of work


@register_metric("embedding_row_norm", needs={"weights"})
def embedding_row_norm(ctx) -> list[Row]:
    """Mean L2 norm of the token embedding's rows."""
    with torch.no_grad():
        w = ctx.model.get_submodule("embed").weight.double()
        return [Row(None, "embed.weight", None, "mean_row_norm", float(w.norm(dim=1).mean()))]
