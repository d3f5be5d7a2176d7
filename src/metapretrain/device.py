"""Where a stage computes: the device its `*.device` setting names, and whether torch has a fused
AdamW kernel for it. One rule for `train.device`, `finetune.device` and `dynamics.device`."""

from __future__ import annotations

import torch


def resolve_device(setting: str, key: str) -> torch.device:
    """`auto` = cuda when a CUDA device is visible, else cpu; `cuda` without one raises, naming `key`."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is 'cuda' but no CUDA device is available (set {key}: auto or cpu)")
    return torch.device(setting)


def use_fused(setting: str, device: torch.device, params: list[torch.Tensor] = ()) -> bool:
    """`train.fused_adamw`: auto = on for CPU and CUDA, the devices with a fused kernel.

    On CPU (torch 2.13, 2 cores) the fused kernel's update takes 0.25-0.3x the time of
    the default multi-tensor one: 1.4 vs 5.8 ms for `micro`, 7 vs 23 ms for `tiny`.
    The fused kernel cannot take FSDP's sharded parameters (DTensors) together with
    plain ones (a step kind's replicated episode head), so auto leaves such a mix to
    the multi-tensor kernel, and `on` refuses it.
    """
    from torch.distributed.tensor import DTensor

    mixed = len({isinstance(p, DTensor) for p in params}) > 1
    if setting == "on":
        if mixed:
            raise ValueError("train.fused_adamw: on cannot update FSDP-sharded parameters together with the step "
                             "kind's unsharded ones (torch's fused AdamW takes one kind); use auto or off")
        return True
    return setting == "auto" and device.type in ("cpu", "cuda") and not mixed
