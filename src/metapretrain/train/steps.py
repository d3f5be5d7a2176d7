"""Step kinds: what one micro-batch of training does.

The loop (train/loop.py) draws a step kind per micro-batch and calls its
`run`; it never knows which objective or meta-learner it runs. Step kinds are
registered by name; meta-learners (metapretrain.meta) register themselves
the same way and are reached through `meta.learner`.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from metapretrain.model.loss import next_token_loss
from metapretrain.registry import Registry
from metapretrain.train.runtime import to_device

# Meta-learners live in metapretrain.meta and register on import.
_STEP_KINDS = Registry("step kind", modules=["metapretrain.meta"])


def register_step(name: str):
    """Class decorator: make a step kind available under `name`."""
    return _STEP_KINDS.register_class(name)


def step_kind(name: str) -> type[StepKind]:
    return _STEP_KINDS.lookup(name)


def known_step_kinds() -> list[str]:
    return _STEP_KINDS.names()


@dataclass
class StepContext:
    """Everything a step kind may use. Built once per run by the loop."""

    model: torch.nn.Module  # the Decoder (possibly compiled/wrapped; `raw_model` is the plain one)
    cfg: Any  # RunConfig
    device: torch.device
    batches: Any  # resumable batch source: .next() -> LongTensor[B, T + 1] on CPU
    shard: Any = None  # numpy memmap of the training tokens (episode samplers index it)
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    raw_model: torch.nn.Module | None = None
    tokenizer_path: str | None = None  # tokenizer.json (word-level episodes need it)
    special_tokens: dict[str, int] = field(default_factory=dict)  # e.g. {"mask": id, "eos": id}

    def __post_init__(self):
        if self.raw_model is None:
            self.raw_model = self.model


@dataclass(frozen=True)
class StepCost:
    """What one micro-batch of a step kind processes (tokens) and computes (training FLOPs)."""

    tokens: int
    flops: float


@dataclass
class StepOutput:
    loss: float  # the step's training loss (for next_token: mean token cross-entropy)
    tokens: int  # tokens processed by forward passes in this step (inner loops included)
    flops: float  # training FLOPs spent (forward + backward, inner loops included)
    metrics: dict[str, float] = field(default_factory=dict)


class StepKind(abc.ABC):
    """Base class. Subclasses implement `run`; `parameters`/`state_dict` when they own state."""

    name = "base"

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx

    def parameters(self) -> list[torch.nn.Parameter]:
        """Extra trainable parameters owned by the step kind; the outer AdamW includes them."""
        return []

    def modules(self) -> dict[str, torch.nn.Module]:
        """Named modules whose state is checkpointed with the model (e.g. {'episode_head': head})."""
        return {}

    @abc.abstractmethod
    def run(self, scale: float, gen: torch.Generator) -> StepOutput:
        """Forward + backward of one micro-batch; gradients (loss * scale) accumulate into `.grad`."""

    @classmethod
    def expected_cost(cls, cfg, model_cfg) -> StepCost:
        """The tokens and FLOPs `run` reports for one micro-batch, from the RunConfig and the resolved
        ModelConfig alone (for plans: `metapretrain grid show`). Batches are global (`train.batch_size`);
        whatever a step samples per process (an episode) is counted once: the caller multiplies by the
        number of processes."""
        raise NotImplementedError(f"step kind {cls.__name__} does not describe its cost (expected_cost)")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027  (optional hook: stateless kinds keep nothing)
        """Restore what `state_dict` returned; stateless step kinds have nothing to restore."""


@register_step("next_token")
class NextTokenStep(StepKind):
    """Autoregressive next-token prediction on the next batch of the token stream."""

    def run(self, scale: float, gen: torch.Generator) -> StepOutput:
        batch = to_device(self.ctx.batches.next(), self.ctx.device)
        with self.ctx.autocast():
            loss = next_token_loss(self.ctx.model, batch)
        (loss * scale).backward()
        n_tokens = batch.shape[0] * (batch.shape[1] - 1)
        flops = self.ctx.raw_model.flops_per_token(batch.shape[1] - 1) * n_tokens
        return StepOutput(loss=loss.item(), tokens=n_tokens, flops=flops)

    @classmethod
    def expected_cost(cls, cfg, model_cfg) -> StepCost:
        from metapretrain.model.flops import training_flops_per_token

        n_tokens = cfg.train.batch_size * cfg.train.seq_len
        return StepCost(tokens=n_tokens, flops=training_flops_per_token(model_cfg, cfg.train.seq_len) * n_tokens)
