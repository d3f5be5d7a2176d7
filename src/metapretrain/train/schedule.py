"""Learning-rate schedule: linear warm-up, then cosine, linear or constant decay to `min_lr_ratio · lr`.

The schedule is a pure function of the update index, so resuming needs only
the index (and the decay length, fixed when the run starts and checkpointed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metapretrain.train.steps import StepCost

KINDS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class Schedule:
    lr: float
    warmup_steps: int
    decay_steps: int
    kind: str = "cosine"
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"train.schedule: unknown schedule {self.kind!r} (expected one of {', '.join(KINDS)})")
        if self.decay_steps < 1:
            raise ValueError(f"train.decay_steps must be >= 1, got {self.decay_steps}")

    def factor(self, step: int) -> float:
        """Multiplier of `lr` for update `step` (0-based: the first update is step 0)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.decay_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape

    def lr_at(self, step: int) -> float:
        return self.lr * self.factor(step)

    def state_dict(self) -> dict:
        return {"decay_steps": self.decay_steps}


def planned_updates(train, update: StepCost | None) -> int:
    """The budget in optimizer updates: exact for steps; for tokens or FLOPs, the budget over `update`,
    the expected cost of one update under the run's step-kind mix (`cost.update_cost`; None: a steps
    budget, which needs none).

    The loop stops on the tokens or FLOPs it really counts, so a run drawing more or fewer meta
    micro-batches than expected ends a few updates after or before this.
    """
    unit, value = train.budget.unit, float(train.budget.value)
    if unit == "steps":
        return max(1, math.ceil(value))
    per_update = update.tokens if unit == "tokens" else update.flops
    return max(1, math.ceil(value / per_update))


def decay_steps_for(train, update: StepCost | None) -> int:
    """`train.decay_steps`, or else the planned number of updates."""
    if train.decay_steps is not None:
        return int(train.decay_steps)
    return planned_updates(train, update)


def from_config(train, update: StepCost | None, decay_steps: int | None = None) -> Schedule:
    return Schedule(lr=train.lr, warmup_steps=train.warmup_steps,
                    decay_steps=decay_steps if decay_steps is not None else decay_steps_for(train, update),
                    kind=train.schedule, min_lr_ratio=train.min_lr_ratio)
