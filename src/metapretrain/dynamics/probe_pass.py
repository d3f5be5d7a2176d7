"""The fixed probe batch and the one pass over a checkpoint that feeds every metric.

`probe_batch` picks `batch_size` non-overlapping windows of `seq_len + 1`
tokens from the validation split, chosen by the run seed alone: every
checkpoint of a run, and every run with the same tokenizer and seed, sees the
same batch.

`run_probe` does one forward (and, when gradients are needed, one backward)
of the real next-token loss (`metapretrain.model.loss.next_token_loss`, the
training objective) with forward hooks that keep:

* the output of every projection `attn.{q,k,v,o}_proj`, `ffn.{gate,up,down}_proj`
  per layer, as a tokens × features matrix (q/k before RoPE);
* the output of every block (the residual stream after layer i) as `resid`;
* the output of `attn_norm` (the attention's input), from which
  `attention(i)` recomputes probabilities with `layers[i].attn.scores`, RoPE
  and the causal mask included, one batch slice at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# Per-layer projections, as submodule paths inside `layers[i]` (docs/architecture.md).
COMPONENTS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
              "ffn.gate_proj", "ffn.up_proj", "ffn.down_proj")
RESIDUAL = "resid"
# Stream of the probe-batch choice, kept apart from anything else seeded by the run seed.
_PROBE_STREAM = 0x0D1A
# Largest attention-probability block materialised at once (elements), to bound memory at long contexts.
_ATTN_CHUNK_ELEMENTS = 1 << 26


def probe_batch(data_dir: str | Path, batch_size: int, seq_len: int, seed: int) -> torch.Tensor:
    """LongTensor [batch_size, seq_len + 1] of validation tokens (inputs and their next-token targets)."""
    from metapretrain.data.shards import open_split

    val = open_split(data_dir, "val")
    window = seq_len + 1
    n_windows = len(val) // window
    if n_windows < batch_size:
        raise ValueError(f"{Path(data_dir) / 'val.bin'}: the validation split has {len(val):,} tokens, "
                         f"fewer than dynamics.probe_batch_size={batch_size} windows of {window} tokens; lower "
                         "dynamics.probe_batch_size or dynamics.probe_seq_len, or raise corpus.validation_fraction")
    rng = np.random.default_rng([seed, _PROBE_STREAM])
    starts = np.sort(rng.choice(n_windows, size=batch_size, replace=False)) * window
    rows = np.stack([np.asarray(val[s:s + window], dtype=np.int64) for s in starts])
    return torch.from_numpy(rows)


@dataclass
class CheckpointData:
    """What the metrics of one checkpoint read (see metapretrain.dynamics.registry for `needs`)."""

    step: int
    model: torch.nn.Module
    acts: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # (layer, component) -> [N, F]
    attn_inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> attn_norm output [B, T, d]
    loss: float | None = None
    has_grads: bool = False
    reference: dict[int, torch.Tensor] | None = None  # final checkpoint: layer -> residual [N, d]
    train_log: list[dict] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return len(self.model.layers)

    def module(self, layer: int, component: str) -> torch.nn.Module:
        return self.model.layers[layer].get_submodule(component)

    def attention(self, layer: int) -> Iterator[torch.Tensor]:
        """Attention probabilities [b, H, T, T] of `layer`, over slices of the probe batch."""
        x = self.attn_inputs[layer]
        B, T = x.shape[:2]
        per_row = self.model.layers[layer].attn.n_heads * T * T
        step = max(1, _ATTN_CHUNK_ELEMENTS // per_row)
        attn = self.model.layers[layer].attn
        with torch.no_grad():
            for i in range(0, B, step):
                yield attn.scores(x[i:i + step])

    def release(self) -> None:
        self.acts.clear()
        self.attn_inputs.clear()
        self.model.zero_grad(set_to_none=True)


def run_probe(model: torch.nn.Module, batch: torch.Tensor, *, step: int, activations: bool, attention: bool,
              gradients: bool) -> CheckpointData:
    """One forward (+ backward when `gradients`) of the next-token loss on `batch`, collecting what is asked.

    Leaves `requires_grad` set only on the projection weights, whose `.grad` then holds the loss gradient.
    """
    from metapretrain.model.loss import next_token_loss

    data = CheckpointData(step=step, model=model)
    handles = []

    def keep(key):
        def hook(module, inputs, output):
            data.acts[key] = output.detach().reshape(-1, output.shape[-1])
        return hook

    def keep_attn_input(layer):
        def hook(module, inputs, output):
            data.attn_inputs[layer] = output.detach()
        return hook

    model.eval()
    model.zero_grad(set_to_none=True)
    # Only the projections' gradients are measured: skipping the rest (lm_head's is as costly as its
    # forward at a 50k vocabulary) leaves these unchanged.
    measured = {id(block.get_submodule(c).weight) for block in model.layers for c in COMPONENTS}
    for p in model.parameters():
        p.requires_grad_(id(p) in measured)
    try:
        for i, block in enumerate(model.layers):
            if activations:
                handles += [block.get_submodule(c).register_forward_hook(keep((i, c))) for c in COMPONENTS]
                handles.append(block.register_forward_hook(keep((i, RESIDUAL))))
            if attention:
                handles.append(block.attn_norm.register_forward_hook(keep_attn_input(i)))
        batch = batch.to(next(model.parameters()).device)
        with torch.set_grad_enabled(gradients):
            loss = next_token_loss(model, batch)
            if gradients:
                loss.backward()
        data.loss = float(loss.detach())
        data.has_grads = gradients
    finally:
        for h in handles:
            h.remove()
    return data
