"""Linear CKA between each checkpoint's residual stream and the final checkpoint's, per layer.

For token × feature matrices X and Y of the same tokens, centred over tokens,
CKA(X, Y) = ||Yᵀ X||_F² / (||Xᵀ X||_F ||Yᵀ Y||_F) (Kornblith et al. 2019).
It is 1 for X = Y, invariant to orthogonal transforms and isotropic scaling
of either side, and 0 for uncorrelated representations. Rows: component
`resid.act`, metric `cka_final`, one per layer (the final checkpoint scores 1).
"""

from __future__ import annotations

from metapretrain.dynamics.registry import Row, register_metric


def linear_cka(x, y) -> float:
    """Linear CKA of two [N, d] activation matrices of the same N tokens (float64; NaN if either is constant)."""
    import torch

    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same tokens on both sides, got {x.shape[0]} and {y.shape[0]} rows")
    x = x.to(torch.float64)
    y = y.to(device=x.device, dtype=torch.float64)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    cross = (y.T @ x).square().sum()
    return float(cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


@register_metric("cka", needs={"activations", "reference"})
def cka_metric(ctx) -> list[Row]:
    """Linear CKA of each layer's residual stream with the final checkpoint's on the probe batch."""
    from metapretrain.dynamics.probe_pass import RESIDUAL

    if ctx.reference is None:
        raise RuntimeError("cka needs the final checkpoint's activations (the stage computes them first)")
    return [Row(layer, f"{RESIDUAL}.act", None, "cka_final", linear_cka(ctx.acts[(layer, RESIDUAL)], ctx.reference[layer]))
            for layer in range(ctx.n_layers)]
