"""Effective rank (ER) and proportional effective rank (PER) of weights, activations and gradients.

For a matrix with singular values σ_i, p_i = σ_i / Σ_j σ_j,
ER = exp(-Σ p_i log p_i) and PER = ER / (number of singular values) = ER / min(m, n).
ER is 1 for a rank-1 matrix, k for k equal non-zero singular values, and
invariant to scaling and to orthogonal transforms on either side. A zero
matrix has no spectrum to normalise: its ER is NaN.

Rows (metric `effective_rank` and `per`), per layer, with component
`<module>.<source>`:

* `attn.q_proj.weight` ... `ffn.down_proj.weight`: the weight matrix [out, in];
* `attn.q_proj.grad`  ...: the gradient of the real next-token loss on the probe batch;
* `attn.q_proj.act`   ...: the module's output on the probe batch as a tokens × features
  matrix, and `resid.act`: the residual stream after the block.

Activations are centred over tokens first (each feature's mean removed), so
ER measures how many directions the representation spreads over rather than
being dominated by the shared mean direction (large in the residual stream).
Singular values come from `torch.linalg.svdvals` in float64, batched over
layers (same-shaped matrices of all layers in one call).
"""

from __future__ import annotations

from metapretrain.dynamics.registry import Row, register_metric


def effective_rank(singular_values):
    """ER over the last dimension of a tensor of singular values (float64; NaN where all are zero)."""
    import torch

    sv = singular_values.to(torch.float64)
    p = sv / sv.sum(-1, keepdim=True)
    return torch.exp(-torch.special.xlogy(p, p).sum(-1))


def spectrum_ranks(matrices):
    """(ER, PER) of matrices [..., m, n], computed in float64 in one batched SVD."""
    import torch

    sv = torch.linalg.svdvals(matrices.to(torch.float64))
    er = effective_rank(sv)
    return er, er / sv.shape[-1]


def _rows(component: str, stacked) -> list[Row]:
    er, per = spectrum_ranks(stacked)
    out = []
    for layer, (e, p) in enumerate(zip(er.tolist(), per.tolist(), strict=True)):
        out += [Row(layer, component, None, "effective_rank", e), Row(layer, component, None, "per", p)]
    return out


@register_metric("effective_rank", needs={"weights", "activations", "gradients"})
def effective_rank_metric(ctx) -> list[Row]:
    """ER and PER of every projection's weight, gradient and output, and of the residual stream, per layer."""
    import torch

    from metapretrain.dynamics.probe_pass import COMPONENTS, RESIDUAL

    rows: list[Row] = []
    layers = range(ctx.n_layers)
    with torch.no_grad():
        for comp in COMPONENTS:
            weights = [ctx.module(i, comp).weight for i in layers]
            rows += _rows(f"{comp}.weight", torch.stack([w.detach() for w in weights]))
            if ctx.has_grads and all(w.grad is not None for w in weights):
                rows += _rows(f"{comp}.grad", torch.stack([w.grad for w in weights]))
        for comp in (*COMPONENTS, RESIDUAL):
            if all((i, comp) in ctx.acts for i in layers):
                acts = torch.stack([ctx.acts[(i, comp)] for i in layers]).to(torch.float64)
                rows += _rows(f"{comp}.act", acts - acts.mean(dim=1, keepdim=True))
    return rows
