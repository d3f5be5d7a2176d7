"""What every SMLMT meta-learner shares: the episode builder, the head, features, the inner loop, metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metapretrain.meta import flops
from metapretrain.meta.head import EpisodeHead
from metapretrain.meta.registry import episode_builder
from metapretrain.train.runtime import to_device
from metapretrain.train.steps import StepContext, StepCost, StepKind


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


class EpisodicLearner(StepKind):
    """Base of the learners that adapt on SMLMT episodes through the episode head.

    Episodes come from the training data (`ctx.data`: its tokens, the tokenizer's [MASK] id, the tokenizer
    for word classes), one per process; features go through the root module's forward, which FSDP gathers.
    """

    needs = ("data",)
    supports_fsdp = True
    samples_per_rank = True

    def __init__(self, ctx: StepContext) -> None:
        super().__init__(ctx)
        meta = ctx.cfg.meta
        self.meta = meta
        special = ctx.data.special_tokens
        if "mask" not in special:
            raise ValueError(f"meta.learner={meta.learner} needs the tokenizer's [MASK] id in TrainingData.special_tokens")
        builder_cls = episode_builder(meta.episode.builder)
        self.builder = builder_cls(ctx.data.tokens, meta.episode, special["mask"], special.get("eos"),
                                   ctx.data.tokenizer_path)
        self.backbone = ctx.raw_model
        output_init = meta.head.output_init
        self.head = EpisodeHead(self.backbone.cfg.d_model, meta.episode.n_way, meta.head.layers,
                                meta.head.width, meta.head.dropout, output_init).to(ctx.device)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.head.parameters())

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"episode_head": self.head}

    # -- pieces -------------------------------------------------------------

    def start_episode(self, gen: torch.Generator):
        """Sample an episode; returns (episode, support labels, query labels) with the labels on the device."""
        ep = self.builder.sample(gen)
        self.head.train()
        return ep, ep.support_labels.to(self.ctx.device), ep.query_labels.to(self.ctx.device)

    def query_metrics(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return {"meta/query_loss": loss.item(), "meta/query_acc": accuracy(logits.detach(), labels),
                "meta/head_weight_norm": self.head.weight_norm()}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Final hidden state at the masked (last) position, fp32 [B, d]."""
        with self.ctx.autocast():
            # Through forward, not .hidden: FSDP's hooks must gather the sharded parameters.
            h = self.backbone(to_device(x, self.ctx.device), output="hidden")
        return h[:, -1].float()

    def head_params(self) -> dict[str, torch.Tensor]:
        return dict(self.head.named_parameters())

    def inner_loop(self, feats: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                   feature_grad: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """First-order SGD on the head from its stored weights; returns detached fast weights.

        When `feature_grad` is given (a zero tensor like `feats`), each inner
        step's d(support loss)/d(features) is added into it, for callers that
        pass support-loss gradients on to the backbone.
        """
        fast = {n: p.detach() for n, p in self.head.named_parameters()}
        norms = []
        for _ in range(self.meta.inner.steps):
            leaves = {n: w.detach().requires_grad_() for n, w in fast.items()}
            x = feats.detach().requires_grad_() if feature_grad is not None else feats.detach()
            loss = F.cross_entropy(self.head(x, leaves, gen), labels)
            wrt = [*leaves.values(), x] if feature_grad is not None else list(leaves.values())
            grads = torch.autograd.grad(loss, wrt)
            if feature_grad is not None:
                feature_grad += grads[-1]
                grads = grads[:-1]
            norms.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
            fast = {n: (w - self.meta.inner.lr * g).detach() for (n, w), g in zip(leaves.items(), grads, strict=True)}
        return fast, {"meta/inner_grad_norm": float(torch.stack(norms).mean())}

    @torch.no_grad()
    def support_metrics(self, feats: torch.Tensor, labels: torch.Tensor,
                        before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
        """Support loss/accuracy at the initial and adapted head, without dropout."""
        was = self.head.training
        self.head.eval()
        out = {}
        for tag, params in (("before", before), ("after", after)):
            logits = self.head(feats.detach(), params)
            out[f"meta/support_loss_{tag}"] = float(F.cross_entropy(logits, labels))
            out[f"meta/support_acc_{tag}"] = accuracy(logits, labels)
        self.head.train(was)
        return out

    # -- accounting ---------------------------------------------------------
    # `run` reports `step_cost` of the episode it ran, and `expected_cost` is the same function of the
    # config, so what a plan expects and what a run counts cannot drift apart.

    @classmethod
    def step_cost(cls, meta, model_cfg, n_support: int, n_query: int) -> StepCost:
        """Tokens and FLOPs of one meta step on an episode of `n_support` + `n_query` windows."""
        raise NotImplementedError(f"{cls.__name__} does not describe its cost (step_cost)")

    @classmethod
    def expected_cost(cls, cfg, model_cfg) -> StepCost:
        ep = cfg.meta.episode
        return cls.step_cost(cfg.meta, model_cfg, ep.n_way * ep.k_shot, ep.n_way * ep.q_query)

    @staticmethod
    def episode_flops(meta, model_cfg, n_support: int, n_query: int, *, support_backward: bool,
                      query_backward: bool, head_inner: float, head_extra: float) -> float:
        """Backbone passes over support/query windows plus `head_inner`/`head_extra` head forward-equivalents.

        `head_inner` and `head_extra` are in units of one head forward on one example.
        """
        W = meta.episode.window
        per_token = flops.backbone_forward(model_cfg, W)
        support = n_support * W * per_token * (3.0 if support_backward else 1.0)
        query = n_query * W * per_token * (3.0 if query_backward else 1.0)
        head_matmul, _ = EpisodeHead.shape_params(model_cfg.d_model, meta.episode.n_way, meta.head.layers,
                                                  meta.head.width)
        return support + query + (head_inner + head_extra) * flops.head_forward(head_matmul)
