"""How the loop computes: precision, compile, transfers, and the RNG states it checkpoints
(the device itself is metapretrain.device)."""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable

import numpy as np
import torch


def resolve_precision(setting: str, device: torch.device) -> str:
    """`auto` = bf16 autocast on CUDA, fp32 elsewhere (CPU bf16 is slower than fp32 on most CPUs)."""
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return setting


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "bf16":
        return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# What `train.compile` compiles is each transformer block (`Decoder.compile_blocks`); the fused
# head + loss stays eager. On CPU that gains 1.1-1.2x per step (bench/bench_model.py, `micro` and
# `tiny`) for ~20 s of compilation on a cold cache (2-10 s warm), so `auto` compiles CPU runs only
# when they have at least this many micro-batches to pay it back.
CPU_COMPILE_MIN_MICRO_BATCHES = 5_000


def use_compile(setting: str, device: torch.device, micro_batches: int = 0) -> bool:
    """`auto` compiles on CUDA, and on CPU runs of at least CPU_COMPILE_MIN_MICRO_BATCHES micro-batches."""
    if setting in ("on", "off"):
        return setting == "on"
    return device.type == "cuda" or micro_batches >= CPU_COMPILE_MIN_MICRO_BATCHES


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a CPU batch to `device`: on CUDA through pinned memory with a non-blocking copy, so the
    host-to-device transfer overlaps the work already queued on the GPU."""
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def configure_backends(device: torch.device, tf32: bool) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def micro_seeds(seed: int, step: int, micro: int) -> tuple[float, int]:
    """(uniform draw in [0, 1) for the step kind, seed for the step's generator), from (seed, step, micro).

    Stateless: every rank and every resumed attempt computes the same values
    without broadcasting or checkpointing anything.
    """
    words = np.random.SeedSequence([seed, step, micro]).generate_state(3, dtype=np.uint32)
    u = float(words[0]) / 2**32
    gen_seed = (int(words[1]) << 31) ^ int(words[2])
    return u, gen_seed


def rng_state() -> dict:
    """All global RNG states as tensors and ints (loadable with `weights_only=True`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pystate, pygauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(pystate, dtype=torch.int64),
                   "gauss": pygauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
