"""Step kinds: what one micro-batch of training does, and the mix that picks one per micro-batch.

The loop (train/loop.py) asks its `StepMix` for the step kind of each
micro-batch and calls its `run`; it never knows which objective or
meta-learner it runs. Step kinds are registered by name; meta-learners
(metapretrain.meta) register themselves the same way and are reached through
`meta.learner`. A step kind says what the loop and the distributed layer need
to know of it in class attributes: `needs`, `grad_sync`, `supports_fsdp`,
`samples_per_rank`.
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

GRAD_SYNC = ("wrapper", "explicit")  # the values of StepKind.grad_sync


def register_step(name: str):
    """Class decorator: make a step kind available under `name`."""
    return _STEP_KINDS.register_class(name)


def step_kind(name: str) -> type[StepKind]:
    return _STEP_KINDS.lookup(name)


def known_step_kinds() -> list[str]:
    return _STEP_KINDS.names()


@dataclass(frozen=True)
class TrainingData:
    """The tokenized training split, for step kinds that sample their own examples from it."""

    tokens: Any  # numpy memmap of the training tokens
    special_tokens: dict[str, int] = field(default_factory=dict)  # the manifest's, e.g. {"mask": id, "eos": id}
    tokenizer_path: str | None = None  # tokenizer.json (word-level episodes need it)


@dataclass
class StepContext:
    """Everything a step kind may use. Built once per run by the loop; a kind lists what it reads in `needs`."""

    model: torch.nn.Module  # the Decoder (possibly compiled/wrapped; `raw_model` is the plain one)
    cfg: Any  # RunConfig
    device: torch.device
    batches: Any  # resumable batch source: .next() -> LongTensor[B, T + 1] on CPU
    data: TrainingData | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    raw_model: torch.nn.Module | None = None

    def __post_init__(self):
        if self.raw_model is None:
            self.raw_model = self.model


_OPTIONAL_CONTEXT = ("batches", "data")  # the StepContext fields a kind may declare in `needs`


@dataclass(frozen=True)
class StepCost:
    """What one micro-batch of a step kind processes (tokens) and computes (training FLOPs)."""

    tokens: float  # an expected mix of kinds (cost.micro_batch_cost) may be fractional
    flops: float


@dataclass
class StepOutput:
    loss: float  # the step's training loss (for next_token: mean token cross-entropy)
    tokens: int  # tokens processed by forward passes in this step (inner loops included)
    flops: float  # training FLOPs spent (forward + backward, inner loops included)
    metrics: dict[str, float] = field(default_factory=dict)


class StepKind(abc.ABC):
    """Base class. Subclasses implement `run`; `parameters`/`state_dict` when they own state.

    What the loop and the distributed layer (train/distributed.py) read of a kind:

    * `needs`: the optional StepContext fields it uses (`batches`, `data`); building it without one fails.
    * `grad_sync`: how its gradients reach the other data-parallel ranks under DDP. `wrapper`: its backward
      runs through `ctx.model` (the DDP wrapper), which averages everything accumulated when it runs the
      update's last micro-step. `explicit`: it computes through `ctx.raw_model` or writes `.grad` itself, so
      one explicit all-reduce at the update boundary averages the model's gradients when it ran last.
    * `supports_fsdp`: it can train on FSDP2-sharded parameters (it calls the root module's forward, so FSDP
      gathers the shards); kinds that need the full-size parameters (fast weights over the backbone) cannot.
    * `samples_per_rank`: each process samples its own examples (an episode) rather than a share of the
      global batch, so one micro-batch's cost over the job is `expected_cost` times the number of processes.
    """

    name = "base"
    needs: tuple[str, ...] = ()
    grad_sync = "explicit"
    supports_fsdp = False
    samples_per_rank = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.grad_sync not in GRAD_SYNC:
            raise TypeError(f"{cls.__qualname__}.grad_sync={cls.grad_sync!r}; expected one of {', '.join(GRAD_SYNC)}")
        unknown = [n for n in cls.needs if n not in _OPTIONAL_CONTEXT]
        if unknown:
            raise TypeError(f"{cls.__qualname__}.needs names {unknown}; a kind may need {', '.join(_OPTIONAL_CONTEXT)}")

    def __init__(self, ctx: StepContext) -> None:
        missing = [n for n in self.needs if getattr(ctx, n) is None]
        if missing:
            raise ValueError(f"step kind {self.name} needs StepContext.{', '.join(missing)}, but none was given")
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

    needs = ("batches",)
    grad_sync = "wrapper"
    supports_fsdp = True

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


@dataclass(frozen=True)
class Slot:
    """One way a micro-batch can go: a name, the step kind it runs, its probability, the setting that chose it.

    The name keys the kind's checkpointed state (`state["kinds"]`) and the train records' count `n_<name>`.
    `kind` None: off in this run (never drawn, still counted).
    """

    name: str
    kind: type[StepKind] | None
    probability: float
    setting: str | None = None  # e.g. "meta.learner"; None: every run has this kind

    @property
    def label(self) -> str:
        """How messages name the kind: `meta.learner=reptile`, or `step kind next_token`."""
        return f"{self.setting}={self.kind.name}" if self.setting else f"step kind {self.kind.name}"


def config_slots(cfg) -> list[Slot]:
    """The slots of a RunConfig, base first: `next_token`, then `meta` (the `meta.learner` kind, with
    probability `meta.hybrid_ratio`; off when meta-learning is)."""
    from metapretrain.meta.registry import learner

    on = cfg.meta.enabled
    meta = Slot("meta", learner(cfg.meta.learner) if on else None, cfg.meta.hybrid_ratio if on else 0.0,
                "meta.learner")
    return [Slot("next_token", step_kind("next_token"), 1 - meta.probability), meta]


class StepMix:
    """A run's step kinds, built, and the draw of the one each micro-batch runs.

    `draw(u)`, u uniform in [0, 1) (`runtime.micro_seeds`): the slots after the first take consecutive
    shares of [0, 1) of their probabilities, in order; the first (base) slot runs when u falls in none.
    The base slot's mean loss is the train record's `loss`; the other slots' metrics are logged as
    `<slot>/<metric>`.
    """

    def __init__(self, slots: list[Slot], ctx: StepContext) -> None:
        self.slots = slots
        self.base = slots[0].name
        # Built in slot order: a kind's construction may draw from the global RNG (a head's init).
        self.kinds = {s.name: s.kind(ctx) for s in slots if s.kind is not None}

    @classmethod
    def from_config(cls, cfg, ctx: StepContext) -> StepMix:
        return cls(config_slots(cfg), ctx)

    @property
    def names(self) -> list[str]:
        """Every slot's name, off ones included, base first."""
        return [s.name for s in self.slots]

    def draw(self, u: float) -> tuple[str, StepKind]:
        """(slot name, step kind) of the micro-batch whose uniform draw is `u`."""
        edge = 0.0
        for slot in self.slots[1:]:
            if slot.kind is not None:
                edge += slot.probability
                if u < edge:
                    return slot.name, self.kinds[slot.name]
        return self.base, self.kinds[self.base]
